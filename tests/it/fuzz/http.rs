//! Fuzz target of the HTTP service (feature `service`): bodies, query strings, paths,
//! headers and raw request bytes against an in-process server on a loopback port.

use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use threatrank::service::{api, AppState, Db, Engine, ServeParams};

/// Largest body the fuzzed service takes (small, so oversized bodies are cheap to make).
const MAX_BODY: usize = 64 * 1024;

/// The tenant whose key the requests carry: the sample's most frequent one.
fn tenant() -> u64 {
    static T: OnceLock<u64> = OnceLock::new();
    *T.get_or_init(|| {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for e in sample_evidence() {
            *counts.entry(e.tenant.0).or_default() += 1;
        }
        counts.into_iter().max_by_key(|&(t, n)| (n, t)).unwrap().0
    })
}

struct Service {
    addr: SocketAddr,
    key: String,
    threats: Vec<String>,
}

/// An in-process service on a loopback port (its own tokio runtime thread), with a key for
/// [`tenant`] and some threats already stored.
fn service() -> &'static Service {
    static S: OnceLock<Service> = OnceLock::new();
    S.get_or_init(|| {
        let dir = fuzz_dir();
        let mut params = ServeParams::new(shared_model().clone(), dir.join("fuzz.sqlite"));
        params.max_body_bytes = MAX_BODY;
        let valid = params.check().unwrap();
        let engine = Engine::load(&params.model, kn().clone()).unwrap();
        let db = Db::open(&params.db, 2).unwrap();
        let (_, key) = db.add_key(tenant(), "fuzz").unwrap();
        let state = std::sync::Arc::new(AppState::new(valid, engine, db));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, api::router(state)).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        let mut s = Service {
            addr,
            key,
            threats: Vec::new(),
        };
        // some of the tenant's rows, so queue, threat and verdict routes have data
        let rows: Vec<&String> = sample()
            .1
            .iter()
            .zip(sample_evidence())
            .filter(|(_, e)| e.tenant.0 == tenant())
            .map(|(l, _)| l)
            .take(40)
            .collect();
        let mut body = sample().0.clone() + "\n";
        for l in rows {
            body.push_str(l);
            body.push('\n');
        }
        let auth = format!("Bearer {}", s.key);
        let r = send(
            addr,
            &request(
                "POST",
                "/v1/alerts",
                &[("Authorization", &auth), ("Content-Type", "text/csv")],
                body.as_bytes(),
            ),
            false,
        )
        .unwrap();
        assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
        let v: Value = serde_json::from_slice(&r.1).unwrap();
        s.threats = v["threats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert!(!s.threats.is_empty());
        s
    })
}

fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends raw request bytes and reads until the server closes: (status, body). A status of 0
/// means the server closed without an answer. `eof` closes the sending side after the bytes
/// (for raw bytes that may never complete a request; hyper then drops the connection).
fn send(addr: SocketAddr, raw: &[u8], eof: bool) -> Result<(u16, Vec<u8>), TestCaseError> {
    let io = |e: std::io::Error| TestCaseError::fail(format!("no answer in time: {e}"));
    let mut s = TcpStream::connect(addr).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    // the server may answer (413, 400) and close before the whole body is written
    let _ = s.write_all(raw);
    if eof {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(io(e)),
    }
    if out.is_empty() {
        return Ok((0, out));
    }
    let text = String::from_utf8_lossy(&out);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| TestCaseError::fail(format!("not an HTTP answer: {text:.200}")))?;
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out[i + 4..].to_vec(),
        None => Vec::new(),
    };
    // chunked bodies: keep the JSON between the chunk sizes
    let chunked = text.lines().take_while(|l| !l.is_empty()).any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((status, if chunked { dechunk(&body) } else { body }))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < i + 2 + n {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[(i + 4 + n).min(b.len())..];
    }
    out
}

const ROUTES: &[&str] = &[
    "/",
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/v1/alerts",
    "/v1/queue",
    "/v1/threats/{id}",
    "/v1/threats/{id}/verdict",
    "/v1/notifications",
    "/v1/drift",
    "/v1/nothing",
    "//v1/queue",
    "/v1/threats/",
    "/v1/queue/../healthz",
    "/v1/%71ueue",
];

const QUERY_KEYS: &[&str] = &[
    "top",
    "tactic",
    "grade",
    "status",
    "min_priority",
    "limit",
    "",
    "top[]",
    "%74op",
];

const QUERY_VALUES: &[&str] = &[
    "",
    "1",
    "0",
    "50",
    "1000",
    "1001",
    "-1",
    "18446744073709551616",
    "1e3",
    "all",
    "open",
    "verdicted",
    "TP",
    "TruePositive",
    "lateral-movement",
    "%00",
    "%ff",
    "%zz",
    "%",
    "+",
    "a&b",
    "=",
    "%E2%80%AE",
    "x%0d%0aSet-Cookie:%20a",
];

const IDS: &[&str] = &[
    "0",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "abc",
    "%00",
    "%ff",
    "1%2F2",
    "",
];

#[derive(Debug, Clone)]
enum Body {
    Empty,
    Csv(GuideCase, bool),
    Jsonl(NativeCase),
    Verdict(Vec<(String, String)>, Vec<JsonLineEdit>),
    Bytes(Blob),
    Oversized,
}

#[derive(Debug, Clone)]
struct HttpCase {
    method: &'static str,
    route: &'static str,
    id: Result<usize, &'static str>,
    query: Vec<(String, String)>,
    auth: Option<&'static str>,
    content_type: &'static str,
    body: Body,
}

fn verdict_body() -> impl Strategy<Value = Body> {
    let grade = select(
        &[
            "\"TP\"",
            "\"BP\"",
            "\"FalsePositive\"",
            "\"tp\"",
            "\"\"",
            "1",
        ][..],
    );
    let reason = prop_oneof![
        Just(None),
        any::<String>().prop_map(|s| Some(serde_json::to_string(&s).unwrap())),
        (1990usize..2010).prop_map(|n| Some(format!("\"{}\"", "é".repeat(n)))),
    ];
    (
        grade,
        reason,
        proptest::collection::vec(json_line_edit(), 0..2),
    )
        .prop_map(|(g, r, edits)| {
            let mut f = vec![("grade".to_string(), g.to_string())];
            if let Some(r) = r {
                f.push(("reason".into(), r));
            }
            Body::Verdict(f, edits)
        })
}

fn http_case() -> impl Strategy<Value = HttpCase> {
    let body = prop_oneof![
        1 => Just(Body::Empty),
        4 => (guide_case(), proptest::bool::weighted(0.7)).prop_map(|(c, own)| Body::Csv(c, own)),
        3 => native_case().prop_map(Body::Jsonl),
        3 => verdict_body(),
        1 => blob(any::<u8>(), 512).prop_map(Body::Bytes),
        1 => Just(Body::Oversized),
    ];
    let query = proptest::collection::vec(
        (
            prop_oneof![4 => select(QUERY_KEYS).prop_map(str::to_string), 1 => "[a-z%&=]{0,6}"],
            prop_oneof![4 => select(QUERY_VALUES).prop_map(str::to_string), 1 => "[ -~]{0,8}"],
        ),
        0..4,
    );
    let methods = &["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"][..];
    // mostly the routes that read input, with their own method; sometimes anything
    let endpoint = prop_oneof![
        4 => Just(("POST", "/v1/alerts")),
        2 => Just(("POST", "/v1/threats/{id}/verdict")),
        2 => Just(("GET", "/v1/queue")),
        1 => Just(("GET", "/v1/threats/{id}")),
        1 => Just(("GET", "/v1/notifications")),
        1 => Just(("GET", "/v1/drift")),
        3 => (select(methods), select(ROUTES)),
    ];
    let content_type = prop_oneof![
        3 => Just(None),
        1 => select(&[
            "text/csv",
            "application/x-ndjson",
            "application/json",
            "text/csv; charset=utf-8",
            "TEXT/CSV",
            "text/plain",
            "",
            "multipart/form-data; boundary=x",
        ][..])
        .prop_map(Some),
    ];
    (
        endpoint,
        prop_oneof![3 => (0..64usize).prop_map(Ok::<usize, &'static str>), 1 => select(IDS).prop_map(Err)],
        query,
        prop_oneof![
            6 => Just(Some("good")),
            1 => Just(None),
            1 => select(&["Bearer ", "Bearer x", "Basic abc", "bearer good", "Bearer \u{e9}"][..]).prop_map(Some),
        ],
        content_type,
        body,
    )
        .prop_map(|((method, route), id, query, auth, content_type, body)| {
            // `None`: the type that matches the body
            let content_type = content_type.unwrap_or(match &body {
                Body::Csv(..) => "text/csv",
                Body::Jsonl(_) => "application/x-ndjson",
                _ => "application/json",
            });
            HttpCase {
                method,
                route,
                id,
                query,
                auth,
                content_type,
                body,
            }
        })
}

/// Body bytes, and for a structured CSV body the records it must count.
fn body_bytes(b: &Body) -> (Vec<u8>, Option<u64>) {
    match b {
        Body::Empty => (Vec::new(), None),
        Body::Csv(case, own) => {
            let mut case = case.clone();
            if *own {
                // rows of the key's tenant, so they reach storage and scoring
                let tenant_rows: Vec<usize> = sample_evidence()
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.tenant.0 == tenant())
                    .map(|(i, _)| i)
                    .collect();
                for r in &mut case.rows {
                    r.sample = tenant_rows[r.sample % tenant_rows.len()];
                }
            }
            let built = build_csv(&case);
            let expect = (built.simple && built.header_ok && case.cut.is_none()).then(|| {
                let lines = lines_of(&built.bytes, true);
                (1..lines.len())
                    .filter(|&l| lines[l].1 > lines[l].0)
                    .count() as u64
            });
            (built.bytes, expect)
        }
        Body::Jsonl(c) => (build_jsonl(c).0, None),
        Body::Verdict(fields, edits) => {
            let mut line = join_fields(fields);
            for e in edits {
                if let JsonLineEdit::Splice(p, b) = e {
                    let p = (*p).min(line.len());
                    line.splice(p..p, b.0.iter().copied());
                }
            }
            (line, None)
        }
        Body::Bytes(b) => (b.0.clone(), None),
        Body::Oversized => (vec![b'7'; MAX_BODY + 1], None),
    }
}

fn pct(s: &str) -> String {
    // keep '%' sequences as written (they are the point); escape what HTTP forbids in a request
    // target (`fuzz_http_raw` sends those)
    s.bytes()
        .map(|b| match b {
            b' ' | b'#' | b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' => {
                format!("%{b:02X}")
            }
            0..=0x1f | 0x7f.. => format!("%{b:02X}"),
            _ => (b as char).to_string(),
        })
        .collect()
}

fn check_answer(
    case: &HttpCase,
    status: u16,
    body: &[u8],
    expect_records: Option<u64>,
) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(body);
    prop_assert!(status != 0, "the server closed without an answer");
    prop_assert!(status < 500, "server error {status}: {text:.300}");
    if case.method == "HEAD" {
        return Ok(());
    }
    if status >= 400 {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            TestCaseError::fail(format!("error {status} is not JSON ({e}): {text:.300}"))
        })?;
        prop_assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "error shape: {v}"
        );
    }
    if case.route == "/v1/alerts" && case.method == "POST" && status == 200 {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let n = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
        prop_assert_eq!(n("records"), n("accepted") + n("rejected"), "{}", v);
        let rejections = v["rejections"].as_array().cloned().unwrap_or_default();
        prop_assert_eq!(rejections.len() as u64, n("rejected"));
        for r in &rejections {
            prop_assert!(r["line"].as_u64().is_some_and(|l| l >= 1), "{r}");
            prop_assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        }
        if let Some(records) = expect_records {
            prop_assert_eq!(n("records"), records, "records of the body: {}", v);
        }
    }
    Ok(())
}

#[test]
fn fuzz_http_requests() {
    let _ = sample_evidence();
    let s = service();
    let health = request("GET", "/healthz", &[], b"");
    // answers per route and status, printed at the end: what the cases reached
    let seen = std::sync::Mutex::new(BTreeMap::<(String, u16), u64>::new());
    fuzz("fuzz_http_requests", 3, http_case(), |case| {
        let id = match case.id {
            Ok(i) => s.threats[i % s.threats.len()].clone(),
            Err(raw) => raw.to_string(),
        };
        let mut target = case.route.replace("{id}", &id);
        if !case.query.is_empty() {
            let q: Vec<String> = case
                .query
                .iter()
                .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
                .collect();
            target = format!("{target}?{}", q.join("&"));
        }
        let auth = case.auth.map(|a| {
            if a == "good" {
                format!("Bearer {}", s.key)
            } else {
                a.to_string()
            }
        });
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = auth.as_deref() {
            headers.push(("Authorization", a));
        }
        if !case.content_type.is_empty() {
            headers.push(("Content-Type", case.content_type));
        }
        let (body, expect) = body_bytes(&case.body);
        let (status, answer) = send(
            s.addr,
            &request(case.method, &target, &headers, &body),
            false,
        )?;
        let expect = expect.filter(|_| case.content_type.contains("csv"));
        *seen
            .lock()
            .unwrap()
            .entry((format!("{} {}", case.method, case.route), status))
            .or_default() += 1;
        check_answer(&case, status, &answer, expect)?;
        let (alive, _) = send(s.addr, &health, false)?;
        prop_assert_eq!(alive, 200, "the service stopped answering");
        Ok(())
    });
    eprintln!("fuzz_http_requests answers: {:?}", seen.lock().unwrap());
}

#[test]
fn fuzz_http_raw() {
    let s = service();
    let health = request("GET", "/healthz", &[], b"");
    let input = prop_oneof![
        blob(any::<u8>(), 600),
        (
            select(ROUTES),
            prop_oneof![Just(Blob(Vec::new())), blob(any::<u8>(), 40)],
            prop_oneof![Just(Blob(Vec::new())), blob(any::<u8>(), 200)],
        )
            .prop_map(|(route, junk, tail)| {
                let mut r = format!("GET {route}").into_bytes();
                r.extend(junk.0);
                r.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
                r.extend(tail.0);
                r.extend_from_slice(b"\r\n\r\n");
                Blob(r)
            }),
    ];
    fuzz("fuzz_http_raw", 2, input, |Blob(raw)| {
        let (status, answer) = send(s.addr, &raw, true)?;
        prop_assert!(
            status < 500,
            "server error {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        let (alive, _) = send(s.addr, &health, false)?;
        prop_assert_eq!(alive, 200, "the service stopped answering");
        Ok(())
    });
}

/// Found by `fuzz_http_requests`: a threat id whose percent-escapes decode to bytes that are not
/// UTF-8 got axum's plain-text 400 ("Invalid URL: Invalid UTF-8 in `id`") instead of the JSON
/// error every other unknown id gets.
#[test]
fn threat_ids_that_do_not_decode_get_the_json_404() {
    let s = service();
    let auth = format!("Bearer {}", s.key);
    for (method, target) in [
        ("GET", "/v1/threats/%ff"),
        ("GET", "/v1/threats/%c3%28"),
        ("POST", "/v1/threats/%ff/verdict"),
    ] {
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        let body = br#"{"grade":"TP"}"#;
        let (status, answer) = send(s.addr, &request(method, target, &headers, body), false)
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        let v: Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{target}: {e}: {}", String::from_utf8_lossy(&answer)));
        assert_eq!(status, 404, "{target}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{target}: {v}");
    }
}
