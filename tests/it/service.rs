//! The scoring service over real HTTP on loopback: every endpoint, tenant isolation, bad keys,
//! malformed and oversized bodies, `kill -9` durability, model swap under load, and the
//! service's score equal to `threatrank score`'s.

use crate::common::{self, sample};
use serde_json::Value;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use threatrank::service::client::{Client, Response};

/// A `threatrank serve` child process on a free loopback port; killed on drop.
pub struct Server {
    child: Option<Child>,
    /// where it listens
    pub addr: SocketAddr,
}

/// The shipped model.
pub fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json.gz")
}

impl Server {
    /// Starts the service on `db` with `model` and extra flags; waits until it listens.
    pub fn start(db: &Path, model: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(db, model, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(
        db: &Path,
        model: &Path,
        extra: &[&str],
        env: &[(&str, &OsStr)],
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_threatrank"))
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--db")
            .arg(db)
            .arg("--model")
            .arg(model)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("serve starts");
        let out = child.stdout.take().expect("stdout piped");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("serve prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("unexpected first line from serve: {line:?}")
            })
            .parse()
            .expect("address parses");
        Server {
            child: Some(child),
            addr,
        }
    }

    /// A client of this server.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then waits up to `limit` for the process to end: its exit status, or `None`
    /// when it is still running (it is then killed when dropped).
    pub fn terminate_within(
        &mut self,
        limit: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let pid = self.pid().to_string();
        let o = Command::new("kill").args(["-TERM", &pid]).output();
        assert!(o.is_ok_and(|o| o.status.success()), "kill -TERM {pid}");
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = self.child.as_mut()?.try_wait().expect("try_wait") {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// `kill -9` and wait.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaped");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `threatrank keys add` for a tenant, as run.
fn keys_add(db: &Path, tenant: u64, label: &str) -> std::process::Output {
    common::run_os(&[
        "keys".as_ref(),
        "add".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
        "--tenant".as_ref(),
        tenant.to_string().as_ref(),
        "--label".as_ref(),
        label.as_ref(),
    ])
}

/// Makes a key for a tenant with the CLI; returns the secret.
pub fn add_key(db: &Path, tenant: u64, label: &str) -> String {
    let o = keys_add(db, tenant, label);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let key = common::stdout(&o).trim().to_string();
    assert!(key.starts_with("trk_"), "{key}");
    key
}

/// Up to `n` of the sample's rows of one tenant, split into fields.
pub fn tenant_rows(tenant: u64, n: usize) -> Vec<Vec<String>> {
    let org = common::col("OrgId");
    sample()
        .1
        .iter()
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|r| r[org] == tenant.to_string())
        .take(n)
        .collect()
}

/// The sample's header and up to `n` of its rows of one tenant, as CSV text.
pub fn tenant_csv(tenant: u64, n: usize) -> String {
    common::csv_text(&common::header_names(), &tenant_rows(tenant, n))
}

fn post_csv(c: &mut Client, key: &str, csv: &str) -> Response {
    c.post("/v1/alerts", Some(key), "text/csv", csv.as_bytes())
        .expect("request")
}

fn verdict(c: &mut Client, key: &str, id: &str, body: &str) -> Response {
    c.post(
        &format!("/v1/threats/{id}/verdict"),
        Some(key),
        "application/json",
        body.as_bytes(),
    )
    .expect("request")
}

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"]["code"], code, "{j}");
    assert!(j["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

fn ids(queue: &Value) -> Vec<String> {
    queue["threats"]
        .as_array()
        .expect("threats array")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn alerts_queue_threat_verdict_notifications_round_trip() {
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let key = add_key(&db, 0, "alice@soc");
    let s = Server::start(&db, &default_model(), &[]);
    let mut c = s.client();

    let csv = tenant_csv(0, 150);
    let r = post_csv(&mut c, &key, &csv);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["records"], 150);
    assert_eq!(j["accepted"], 150);
    assert_eq!(j["rejected"], 0);
    assert_eq!(j["evidence_stored"], 150);
    let scored = j["threats"].as_array().unwrap().len();
    assert!(scored > 5, "{j}");

    // the same batch again (a retried request): nothing stored twice, same threats
    let again = post_csv(&mut c, &key, &csv).json();
    assert_eq!(again["evidence_stored"], 0);
    assert_eq!(again["evidence_duplicate"], 150);

    let q = c.get("/v1/queue?top=1000&status=all", Some(&key)).unwrap();
    assert_eq!(q.status, 200);
    let q = q.json();
    assert_eq!(q["total"], scored as u64);
    let threats = q["threats"].as_array().unwrap();
    assert_eq!(threats.len(), scored);
    let n_evidence: u64 = threats
        .iter()
        .map(|t| t["n_evidence"].as_u64().unwrap())
        .sum();
    assert_eq!(
        n_evidence, 150,
        "every stored row belongs to exactly one threat"
    );
    for w in threats.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let pa = a["priority"].as_u64().unwrap();
        let pb = b["priority"].as_u64().unwrap();
        assert!(
            pa > pb || (pa == pb && a["p_tp"].as_f64() >= b["p_tp"].as_f64()),
            "{a} {b}"
        );
    }
    for t in threats {
        let sum =
            t["p_tp"].as_f64().unwrap() + t["p_bp"].as_f64().unwrap() + t["p_fp"].as_f64().unwrap();
        assert!((sum - 1.0).abs() < 1e-3, "{t}");
        assert!(["TP", "BP", "FP"].contains(&t["predicted"].as_str().unwrap()));
        assert!(t["reasons"]
            .as_array()
            .is_some_and(|r| !r.is_empty() && r.len() <= 5));
        assert!(t["verdict"].is_null());
    }
    let top = c.get("/v1/queue?top=3", Some(&key)).unwrap().json();
    assert_eq!(
        ids(&top),
        ids(&q)[..3].to_vec(),
        "top=K is the head of the queue"
    );

    // one threat in detail
    let id = threats[0]["id"].as_str().unwrap().to_string();
    let d = c.get(&format!("/v1/threats/{id}"), Some(&key)).unwrap();
    assert_eq!(d.status, 200);
    let d = d.json();
    assert_eq!(d["id"], id.as_str());
    assert_eq!(
        d["evidence"].as_array().unwrap().len() as u64,
        d["n_evidence"].as_u64().unwrap()
    );
    assert!(d["families"].as_array().is_some_and(|f| !f.is_empty()));
    assert_eq!(d["verdicts"].as_array().unwrap().len(), 0);

    // verdicts: stored with who and when, latest shown in the queue, full trail in detail
    let v = verdict(&mut c, &key, &id, r#"{"grade":"BP","reason":"pen test"}"#);
    assert_eq!(v.status, 201, "{}", v.text());
    let v = v.json();
    assert_eq!(v["grade"], "BP");
    assert_eq!(v["analyst"], "alice@soc");
    assert_eq!(v["reason"], "pen test");
    assert_eq!(v["predicted"], threats[0]["predicted"]);
    let v2 = verdict(&mut c, &key, &id, r#"{"grade":"TruePositive"}"#);
    assert_eq!(v2.status, 201);
    assert!(v2.json()["seq"].as_i64() > v["seq"].as_i64());
    let d = c
        .get(&format!("/v1/threats/{id}"), Some(&key))
        .unwrap()
        .json();
    let trail: Vec<&str> = d["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["grade"].as_str().unwrap())
        .collect();
    assert_eq!(trail, ["BP", "TP"]);
    assert_eq!(d["verdict"]["grade"], "TP");
    let open = c.get("/v1/queue?top=1000", Some(&key)).unwrap().json();
    assert!(
        !ids(&open).contains(&id),
        "default status=open hides verdicted threats"
    );
    assert_eq!(open["total"], scored as u64 - 1);
    let done = c
        .get("/v1/queue?status=verdicted", Some(&key))
        .unwrap()
        .json();
    assert_eq!(ids(&done), vec![id.clone()]);

    // filters
    let tp = c
        .get("/v1/queue?top=1000&status=all&grade=TP", Some(&key))
        .unwrap()
        .json();
    assert!(tp["threats"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["predicted"] == "TP"));
    let tactic = threats
        .iter()
        .find_map(|t| t["tactics"].as_array().and_then(|a| a.first()).cloned())
        .expect("some threat has a tactic");
    let by = c
        .get(
            &format!(
                "/v1/queue?top=1000&status=all&tactic={}",
                tactic.as_str().unwrap()
            ),
            Some(&key),
        )
        .unwrap()
        .json();
    assert!(by["total"].as_u64().unwrap() >= 1);
    assert!(by["threats"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["tactics"].as_array().unwrap().contains(&tactic)));
    for bad in [
        "top=0",
        "top=1001",
        "top=x",
        "grade=XX",
        "status=closed",
        "tactic=nope",
        "sort=1",
    ] {
        let r = c.get(&format!("/v1/queue?{bad}"), Some(&key)).unwrap();
        assert_error(&r, 400, "bad_request");
    }

    // notifications: exactly the threats at or above the threshold, highest first, with next
    // steps. The threshold is the queue's second-lowest priority, so the list is neither empty
    // nor everything.
    let mut priorities: Vec<u64> = threats
        .iter()
        .map(|t| t["priority"].as_u64().unwrap())
        .collect();
    priorities.sort_unstable();
    priorities.dedup();
    assert!(
        priorities.len() >= 2,
        "fixture: threats of one priority only: {priorities:?}"
    );
    let min = priorities[1];
    let n = c
        .get(&format!("/v1/notifications?min_priority={min}"), Some(&key))
        .unwrap();
    assert_eq!(n.status, 200);
    let n = n.json();
    assert_eq!(n["min_priority"], min);
    let expected: Vec<String> = threats
        .iter()
        .filter(|t| t["priority"].as_u64().unwrap() >= min)
        .map(|t| t["id"].as_str().unwrap().to_string())
        .take(100)
        .collect();
    assert!(!expected.is_empty() && expected.len() < threats.len());
    let list = n["notifications"].as_array().unwrap();
    let got: Vec<String> = list
        .iter()
        .map(|x| x["threat"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, expected, "the queue's threats at priority >= {min}");
    for x in list {
        assert!(x["priority"].as_u64().unwrap() >= min);
        assert!(x["next_steps"].as_array().is_some_and(|s| !s.is_empty()));
        assert!(x["scope"]["devices"].is_array() && x["scope"]["accounts"].is_array());
    }
    let hi = c
        .get("/v1/notifications?min_priority=100", Some(&key))
        .unwrap()
        .json();
    let above_all = threats
        .iter()
        .filter(|t| t["priority"].as_u64().unwrap() >= 100)
        .count();
    assert_eq!(hi["notifications"].as_array().unwrap().len(), above_all);
    assert_eq!(n["total"].as_u64(), Some(expected.len() as u64));
    // an analyst's BP or FP dismisses a threat from the notifications; a later TP (the latest
    // verdict counts) brings it back
    let first = &expected[0];
    let notified = |c: &mut Client| {
        let n = c
            .get(&format!("/v1/notifications?min_priority={min}"), Some(&key))
            .unwrap()
            .json();
        let ids: Vec<String> = n["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["threat"].as_str().unwrap().to_string())
            .collect();
        (n["total"].as_u64().unwrap(), ids)
    };
    for (grade, listed) in [("FP", false), ("TP", true), ("BP", false)] {
        let body = format!(r#"{{"grade":"{grade}"}}"#);
        assert_eq!(verdict(&mut c, &key, first, &body).status, 201);
        let (total, ids) = notified(&mut c);
        assert_eq!(ids.contains(first), listed, "after {grade}: {ids:?}");
        let want = expected.len() - usize::from(!listed);
        assert_eq!(
            (total, ids.len()),
            (want as u64, want.min(100)),
            "after {grade}"
        );
    }

    // health, metrics, OpenAPI: no key needed, no tenant data
    let h = c.get("/healthz", None).unwrap().json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["model"]["sha256"].as_str().unwrap().len(), 64);
    let m = c.get("/metrics", None).unwrap();
    assert_eq!(m.status, 200);
    let m = m.text();
    assert!(
        m.contains(
            "threatrank_http_requests_total{route=\"/v1/alerts\",method=\"POST\",status=\"200\"} 2"
        ),
        "{m}"
    );
    assert!(m.contains("threatrank_alert_records_accepted_total 300"));
    assert!(m.contains(&format!("threatrank_threats_stored {scored}")));
    // two in the verdict round trip, three on the notified threat
    assert!(m.contains("threatrank_verdicts_total 5"));
    assert!(m.contains("threatrank_scored_priority_count"));
    assert!(!m.contains("tenant="), "metrics never carry a tenant label");
    let o = c.get("/openapi.json", None).unwrap();
    assert_eq!(o.status, 200);
    let o = o.json();
    assert_eq!(o["openapi"], "3.1.0");
    for p in [
        "/v1/alerts",
        "/v1/queue",
        "/v1/threats/{id}",
        "/v1/threats/{id}/verdict",
        "/v1/notifications",
        "/v1/drift",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/",
    ] {
        assert!(o["paths"][p].is_object(), "OpenAPI lacks {p}");
    }
    // the alert content types the document lists are exactly the ones the route takes
    let listed: std::collections::BTreeSet<String> = o["paths"]["/v1/alerts"]["post"]
        ["requestBody"]["content"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut taken = std::collections::BTreeSet::new();
    for t in [
        "text/csv",
        "application/x-ndjson",
        "application/jsonl",
        "application/ndjson",
        "application/json",
        "application/xml",
        "text/plain",
        "application/x-www-form-urlencoded",
    ] {
        let r = c.post("/v1/alerts", Some(&key), t, b"").unwrap();
        if r.status != 415 {
            taken.insert(t.to_string());
        }
    }
    assert_eq!(listed, taken);
    let page = c.get("/", None).unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
}

/// Alert ids (sorted) and titles of a threat's rows in `rows`.
fn rows_of(rows: &[Vec<String>], id: &str) -> (Vec<u64>, Vec<String>) {
    let (inc, alert, title) = (
        common::col("IncidentId"),
        common::col("AlertId"),
        common::col("AlertTitle"),
    );
    let mine: Vec<&Vec<String>> = rows.iter().filter(|r| r[inc] == id).collect();
    let mut alerts: Vec<u64> = mine.iter().map(|r| r[alert].parse().unwrap()).collect();
    alerts.sort_unstable();
    let mut titles: Vec<String> = mine.iter().map(|r| r[title].clone()).collect();
    titles.sort_unstable();
    (alerts, titles)
}

/// Alert ids (sorted) and titles of a threat's detail (`GET /v1/threats/{id}`).
fn evidence_of(detail: &Value) -> (Vec<u64>, Vec<String>) {
    let ev = detail["evidence"].as_array().expect("evidence array");
    let mut alerts: Vec<u64> = ev.iter().map(|e| e["alert_id"].as_u64().unwrap()).collect();
    alerts.sort_unstable();
    let mut titles: Vec<String> = ev
        .iter()
        .map(|e| e["title"].as_str().unwrap().to_string())
        .collect();
    titles.sort_unstable();
    (alerts, titles)
}

/// `(grade, analyst, reason)` of a threat detail's verdict trail.
fn trail(detail: &Value) -> Vec<(String, String, String)> {
    detail["verdicts"]
        .as_array()
        .expect("verdicts array")
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (s("grade"), s("analyst"), s("reason"))
        })
        .collect()
}

/// Tenants 0 and 1 of the sample, with tenant 1's first incident renumbered to tenant 0's
/// first incident id: one id, two threats. Each key sees only its own tenant's threat under
/// that id (title, evidence, verdicts) and a verdict written to it lands in the caller's
/// tenant only; every other id of A's is a 404 for B, as an id nobody has.
#[test]
fn tenants_never_see_each_other_and_bad_keys_get_401() {
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let a = add_key(&db, 0, "alice");
    let b = add_key(&db, 1, "bob");
    let (inc, title) = (common::col("IncidentId"), common::col("AlertTitle"));
    let mut rows_a = tenant_rows(0, 40);
    let mut rows_b = tenant_rows(1, 40);
    let shared = rows_a[0][inc].clone();
    assert!(
        rows_b.iter().all(|r| r[inc] != shared),
        "fixture: tenant 1 has no incident {shared} of its own yet"
    );
    let renamed = rows_b[0][inc].clone();
    for r in rows_b.iter_mut().filter(|r| r[inc] == renamed) {
        r[inc] = shared.clone();
        r[title] = "bob's own incident".into();
    }
    for r in rows_a.iter_mut().filter(|r| r[inc] == shared) {
        r[title] = "alice's own incident".into();
    }
    let header = common::header_names();
    let s = Server::start(&db, &default_model(), &[]);
    let mut c = s.client();
    for (key, rows) in [(&a, &rows_a), (&b, &rows_b)] {
        let r = post_csv(&mut c, key, &common::csv_text(&header, rows));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["accepted"], rows.len());
    }
    let qa = c
        .get("/v1/queue?top=1000&status=all", Some(&a))
        .unwrap()
        .json();
    let qb = c
        .get("/v1/queue?top=1000&status=all", Some(&b))
        .unwrap()
        .json();
    let (ia, ib) = (ids(&qa), ids(&qb));
    assert!(!ia.is_empty() && !ib.is_empty());
    let both: Vec<&String> = ia.iter().filter(|id| ib.contains(id)).collect();
    assert_eq!(both, [&shared], "the one id both tenants have");

    // tenant A's rows pushed with B's key: every one rejected, naming the tenant column
    let r = post_csv(&mut c, &b, &tenant_csv(0, 10)).json();
    assert_eq!(
        (r["accepted"].as_u64(), r["rejected"].as_u64()),
        (Some(0), Some(10))
    );
    for rej in r["rejections"].as_array().unwrap() {
        assert_eq!(rej["column"], "OrgId");
    }
    // B can neither read nor grade A's other threats: 404, exactly as for an id nobody has
    for id in ia.iter().filter(|id| **id != shared) {
        assert_error(
            &c.get(&format!("/v1/threats/{id}"), Some(&b)).unwrap(),
            404,
            "not_found",
        );
        assert_error(
            &verdict(&mut c, &b, id, r#"{"grade":"FP"}"#),
            404,
            "not_found",
        );
    }
    assert_error(
        &c.get("/v1/threats/999999999", Some(&b)).unwrap(),
        404,
        "not_found",
    );
    // nothing of A's changed, and B's counts do not include A's threats
    let qa2 = c
        .get("/v1/queue?top=1000&status=all", Some(&a))
        .unwrap()
        .json();
    assert_eq!(qa, qa2);
    let qb2 = c
        .get("/v1/queue?top=1000&status=all", Some(&b))
        .unwrap()
        .json();
    assert_eq!(qb2["total"], qb["total"]);
    let nb = c
        .get("/v1/notifications?min_priority=0", Some(&b))
        .unwrap()
        .json();
    let nb = nb["notifications"].as_array().unwrap();
    assert_eq!(nb.len(), ib.len().min(100), "min_priority=0: all of B's");
    for n in nb {
        assert!(ib.contains(&n["threat"].as_str().unwrap().to_string()));
    }

    // the shared id: each key reads its own tenant's threat
    let path = format!("/v1/threats/{shared}");
    let detail = |c: &mut Client, key: &str| {
        let r = c.get(&path, Some(key)).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    for (key, rows, own) in [
        (&a, &rows_a, "alice's own incident"),
        (&b, &rows_b, "bob's own incident"),
    ] {
        let d = detail(&mut c, key);
        assert_eq!(d["id"], shared.as_str());
        assert_eq!(d["title"], own, "{d}");
        assert_eq!(evidence_of(&d), rows_of(rows, &shared), "{own}: {d}");
        assert_eq!(trail(&d), [], "{own}");
    }
    // verdicts on it: each lands in the caller's tenant only
    let call = |grade: &str, who: &str| format!(r#"{{"grade":"{grade}","reason":"{who}'s call"}}"#);
    let va = verdict(&mut c, &a, &shared, &call("TP", "alice"));
    assert_eq!(va.status, 201, "{}", va.text());
    assert_eq!(trail(&detail(&mut c, &b)), [], "A's verdict reached B");
    let vb = verdict(&mut c, &b, &shared, &call("FP", "bob"));
    assert_eq!(vb.status, 201, "{}", vb.text());
    // numbered per tenant: B's first verdict is 1 whatever A did (before: one counter over
    // all tenants told B how many verdicts others had given)
    assert_eq!(vb.json()["seq"], 1, "{}", vb.text());
    let own = |g: &str, who: &str, why: &str| vec![(g.into(), who.into(), why.into())];
    assert_eq!(
        trail(&detail(&mut c, &a)),
        own("TP", "alice", "alice's call")
    );
    assert_eq!(trail(&detail(&mut c, &b)), own("FP", "bob", "bob's call"));
    for (key, grade) in [(&a, "TP"), (&b, "FP")] {
        let done = c
            .get("/v1/queue?status=verdicted", Some(key))
            .unwrap()
            .json();
        assert_eq!(ids(&done), [shared.as_str()]);
        assert_eq!(done["threats"][0]["verdict"]["grade"], grade);
    }

    // bad keys
    for (auth, what) in [
        (None, "no header"),
        (Some("Bearer trk_0000"), "unknown key"),
        (Some("Basic YWxpY2U6cHc="), "wrong scheme"),
        (Some("Bearer "), "empty key"),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        for path in [
            "/v1/queue",
            "/v1/notifications",
            "/v1/drift",
            "/v1/threats/1",
        ] {
            let r = c.request("GET", path, &headers, b"").unwrap();
            assert_eq!(r.status, 401, "{what} {path}");
            assert_error(&r, 401, "unauthorized");
        }
        let r = c
            .request("POST", "/v1/alerts", &headers, tenant_csv(0, 2).as_bytes())
            .unwrap();
        assert_eq!(r.status, 401, "{what}");
    }
    // a revoked key stops working at once, while the service runs
    let list = common::run_os(&[
        "keys".as_ref(),
        "list".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
    ]);
    let b_id = common::stdout(&list)
        .lines()
        .find(|l| l.contains("\tbob\t"))
        .and_then(|l| l.split('\t').next())
        .expect("bob listed")
        .to_string();
    assert!(
        !common::stdout(&list).contains("trk_"),
        "keys list never shows secrets"
    );
    let o = common::run_os(&[
        "keys".as_ref(),
        "revoke".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
        "--key-id".as_ref(),
        b_id.as_ref(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_error(&c.get("/v1/queue", Some(&b)).unwrap(), 401, "unauthorized");
    assert_eq!(c.get("/v1/queue", Some(&a)).unwrap().status, 200);
}

#[test]
fn malformed_and_oversized_bodies_are_refused_and_change_nothing() {
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let key = add_key(&db, 0, "alice");
    let s = Server::start(&db, &default_model(), &["--max-body-bytes", "4096"]);
    let mut c = s.client();
    let r = post_csv(&mut c, &key, &tenant_csv(0, 10));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = ids(&c.get("/v1/queue", Some(&key)).unwrap().json())[0].clone();
    let before = c
        .get("/v1/queue?top=1000&status=all", Some(&key))
        .unwrap()
        .json();

    // oversized
    let big = tenant_csv(0, 200);
    assert!(big.len() > 4096);
    assert_error(&post_csv(&mut c, &key, &big), 413, "payload_too_large");
    let huge_reason = format!(r#"{{"grade":"TP","reason":"{}"}}"#, "x".repeat(5000));
    assert_error(
        &verdict(&mut c, &key, &id, &huge_reason),
        413,
        "payload_too_large",
    );
    let long_reason = format!(r#"{{"grade":"TP","reason":"{}"}}"#, "x".repeat(2001));
    assert_error(
        &verdict(&mut c, &key, &id, &long_reason),
        400,
        "bad_request",
    );
    // malformed
    for body in [
        "",
        "{",
        "[]",
        r#"{"grade":1}"#,
        r#"{"grade":"TP","who":"mallory"}"#,
        r#"{"reason":"x"}"#,
        r#"{"grade":"maybe"}"#,
    ] {
        assert_error(&verdict(&mut c, &key, &id, body), 400, "bad_request");
    }
    let wrong_type = c
        .post("/v1/alerts", Some(&key), "application/xml", b"<a/>")
        .unwrap();
    assert_error(&wrong_type, 415, "unsupported_media_type");
    let no_header = post_csv(&mut c, &key, "a,b,c\n1,2,3\n");
    assert_error(&no_header, 400, "bad_request");
    assert!(no_header.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("OrgId"));
    assert_error(&post_csv(&mut c, &key, ""), 400, "bad_request");
    // bad records inside a good body: accounted for, each with line and reason
    let jsonl = concat!(
        "{\"tenant\":0,\"alert_id\":5,\"timestamp\":\"2024-06-01T00:00:00Z\",\"detector\":\"d\",\"title\":\"t\",\"category\":\"Execution\",\"incident_id\":777001}\n",
        "not json\n",
        "{\"tenant\":0,\"alert_id\":6,\"timestamp\":\"yesterday\",\"detector\":\"d\",\"title\":\"t\",\"category\":\"Execution\"}\n",
        "{\"tenant\":0,\"alert_id\":7,\"timestamp\":\"2024-06-01T00:00:00Z\",\"detector\":\"d\",\"title\":\"t\",\"category\":\"Execution\",\"surprise\":1}\n",
    );
    let r = c
        .post(
            "/v1/alerts",
            Some(&key),
            "application/x-ndjson",
            jsonl.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        (
            j["records"].as_u64(),
            j["accepted"].as_u64(),
            j["rejected"].as_u64()
        ),
        (Some(4), Some(1), Some(3))
    );
    let rej = j["rejections"].as_array().unwrap();
    assert_eq!(
        rej.iter()
            .map(|r| r["line"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(rej[1]["column"], "timestamp");
    assert_eq!(rej[2]["column"], "surprise");
    // routes and methods
    assert_error(&c.get("/v1/nothing", Some(&key)).unwrap(), 404, "not_found");
    assert_error(
        &c.request("DELETE", &format!("/v1/threats/{id}"), &[], b"")
            .unwrap(),
        405,
        "method_not_allowed",
    );
    assert_error(
        &c.get("/v1/threats/not-a-number", Some(&key)).unwrap(),
        404,
        "not_found",
    );

    // state intact: the queue is the one from before plus the one good JSONL alert
    let after = c
        .get("/v1/queue?top=1000&status=all", Some(&key))
        .unwrap()
        .json();
    assert_eq!(
        after["total"].as_u64().unwrap(),
        before["total"].as_u64().unwrap() + 1
    );
    assert!(ids(&after).contains(&"777001".to_string()));
    let d = c
        .get(&format!("/v1/threats/{id}"), Some(&key))
        .unwrap()
        .json();
    assert_eq!(d["verdicts"].as_array().unwrap().len(), 0);
    drop(s);
    let check = rusqlite_integrity(&db);
    assert_eq!(check, "ok");
}

fn rusqlite_integrity(db: &Path) -> String {
    threatrank::service::Db::open(db, 1)
        .expect("db opens")
        .integrity()
        .expect("integrity check runs")
}

/// Compiles `sync_snapshot_shim.rs` (the `LD_PRELOAD` library that copies a file to
/// `<file>.synced` at each of its fsyncs) into `dir` with the `rustc` that builds the tests.
fn sync_snapshot_shim(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/sync_snapshot_shim.rs");
    let lib = dir.join("libsync_snapshot_shim.so");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let o = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "cdylib",
            "-C",
            "opt-level=1",
            "-o",
        ])
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("rustc runs");
    assert!(
        o.status.success(),
        "shim: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    lib
}

/// Verdicts acknowledged with 201 are durable: on disk when acknowledged, not merely in the
/// service's memory or the OS page cache.
///
/// Two checks after a `SIGKILL` right after the last acknowledgement (no shutdown, no
/// checkpoint):
/// 1. The files as a power loss would leave them: the service runs with an `LD_PRELOAD` shim
///    (`sync_snapshot_shim.rs`) that copies a database file to `<file>.synced` each time the
///    service fsyncs it. The database and its WAL are assembled from those copies alone (the
///    `-shm` index is left out: SQLite rebuilds it from the WAL) and must hold every
///    acknowledged verdict. A plain copy of the files, or the restart below, would not do:
///    both read the page cache, which survives `kill -9` and holds writes never fsynced.
/// 2. A restart on the live files answers every verdict (the `kill -9` case proper).
///
/// What the simulation catches: a commit not fsynced before the answer (`synchronous=NORMAL`,
/// where the WAL is fsynced only at checkpoints, or `OFF`), and a verdict answered before its
/// commit when the commit has not happened by the kill (one racing the answer by a few
/// microseconds can slip through: the kill comes a round trip later). It was checked to fail
/// with `synchronous=NORMAL` and `OFF` in `Db::connect`; the restart alone passes with both.
/// What it cannot catch:
/// it trusts fsync (a disk that acknowledges a flush it has not done, or a file system that
/// loses synced data, is outside it), assumes a power loss keeps all synced bytes and drops
/// all unsynced ones (a real one may keep some of the latter and tear pages; SQLite's WAL
/// checksums are made for that, but this test does not produce torn pages), ignores the
/// durability of directory entries (SQLite fsyncs the folder when it creates the WAL; a lost
/// entry is not simulated), and sees only syncs made through libc's `fsync`/`fdatasync`. The
/// baseline (the database `keys add` wrote and closed) is fsynced by the test itself.
#[test]
fn acknowledged_verdicts_survive_kill_9_and_a_simulated_power_loss() {
    let dir = common::tmp();
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let db = live.join("s.db");
    let key = add_key(&db, 0, "alice");
    // the closed database as the baseline of what survives: fsynced here, copied to .synced
    let with = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let files = [db.clone(), with(&db, "-wal")];
    for f in files.iter().filter(|f| f.exists()) {
        std::fs::File::open(f).unwrap().sync_all().unwrap();
        std::fs::copy(f, with(f, ".synced")).unwrap();
    }
    let shim = sync_snapshot_shim(dir.path());
    let s = Server::start_with_env(
        &db,
        &default_model(),
        &[],
        &[
            ("LD_PRELOAD", shim.as_os_str()),
            ("THREATRANK_SYNC_SNAPSHOTS", live.as_os_str()),
        ],
    );
    let mut c = s.client();
    assert_eq!(post_csv(&mut c, &key, &tenant_csv(0, 60)).status, 200);
    let queue = ids(&c.get("/v1/queue?top=1000", Some(&key)).unwrap().json());
    assert!(queue.len() >= 5);
    let grades = ["TP", "BP", "FP"];
    let mut acked = Vec::new();
    for (i, id) in queue.iter().enumerate() {
        let g = grades[i % 3];
        let r = verdict(
            &mut c,
            &key,
            id,
            &format!(r#"{{"grade":"{g}","reason":"n{i}"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        acked.push((id.clone(), g, r.json()["seq"].as_i64().unwrap()));
    }
    // SIGKILL right after the last acknowledgement: no shutdown, no checkpoint
    s.kill9();

    // 1. the power-loss image: only what the service fsynced
    let image = dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    for f in &files {
        let synced = with(f, ".synced");
        if synced.exists() {
            std::fs::copy(&synced, image.join(f.file_name().unwrap())).unwrap();
        }
    }
    let image_db = image.join("s.db");
    let copy = threatrank::service::Db::open(&image_db, 1).expect("the image opens");
    for (id, g, seq) in &acked {
        let vs = copy.verdicts(0, id.parse().unwrap()).unwrap();
        let got: Vec<(i64, &str)> = vs.iter().map(|v| (v.tenant_seq, v.grade.short())).collect();
        assert_eq!(
            got,
            [(*seq, *g)],
            "verdict on {id} acknowledged but not on disk at a power loss"
        );
    }
    assert_eq!(copy.integrity().unwrap(), "ok");
    drop(copy);

    // 2. kill -9: a restart on the live files answers every verdict
    let s = Server::start(&db, &default_model(), &[]);
    let mut c = s.client();
    for (id, g, seq) in &acked {
        let d = c
            .get(&format!("/v1/threats/{id}"), Some(&key))
            .unwrap()
            .json();
        let vs = d["verdicts"].as_array().unwrap();
        assert_eq!(vs.len(), 1, "{id}: {d}");
        assert_eq!(vs[0]["grade"], *g);
        assert_eq!(vs[0]["seq"].as_i64().unwrap(), *seq);
    }
    assert_eq!(rusqlite_integrity(&db), "ok");
}

#[test]
fn sighup_swaps_the_model_without_dropping_requests() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let model = dir.path().join("model.json.gz");
    std::fs::copy(default_model(), &model).unwrap();
    let key = add_key(&db, 0, "alice");
    let s = Server::start(&db, &model, &[]);
    let mut c = s.client();
    assert_eq!(post_csv(&mut c, &key, &tenant_csv(0, 30)).status, 200);
    let sha0 = c.get("/healthz", None).unwrap().json()["model"]["sha256"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while done.load(Ordering::Relaxed) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "load generator stalled"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let load = {
        let stop = stop.clone();
        let done = done.clone();
        let addr = s.addr;
        let key = key.clone();
        std::thread::spawn(move || {
            let mut c = Client::new(addr);
            let mut statuses = Vec::new();
            let csv = tenant_csv(0, 45);
            while !stop.load(Ordering::Relaxed) {
                statuses.push(
                    c.get("/v1/queue?top=5", Some(&key))
                        .map(|r| r.status)
                        .unwrap_or(0),
                );
                statuses.push(
                    c.post("/v1/alerts", Some(&key), "text/csv", csv.as_bytes())
                        .map(|r| r.status)
                        .unwrap_or(0),
                );
                done.fetch_add(2, Ordering::Relaxed);
            }
            statuses
        })
    };
    // the same model written uncompressed: another file (another SHA-256), same scores
    let json = {
        use std::io::Read;
        let mut s = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(default_model()).unwrap())
            .read_to_end(&mut s)
            .unwrap();
        s
    };
    wait_for(4);
    let tmp = dir.path().join("model.json.gz.new");
    std::fs::write(&tmp, &json).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    let o = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(o.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let sha = c.get("/healthz", None).unwrap().json()["model"]["sha256"].clone();
        if sha != sha0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "model not swapped within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let after_swap = done.load(Ordering::Relaxed);
    wait_for(after_swap + 4);
    stop.store(true, Ordering::Relaxed);
    let statuses = load.join().unwrap();
    assert!(statuses.len() >= 8);
    assert!(
        statuses.iter().all(|&s| s == 200),
        "dropped or failed requests during the swap: {statuses:?}"
    );
    let m = c.get("/metrics", None).unwrap().text();
    assert!(m.contains("threatrank_model_reloads_total 1"), "{m}");
}

/// Correlation over pushed batches: loose alerts sharing a device join one candidate threat;
/// a later alert that bridges two threats merges them, and the merged-away threat leaves the
/// queue.
#[test]
fn loose_alerts_are_correlated_across_batches() {
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let key = add_key(&db, 7, "alice");
    let s = Server::start(&db, &default_model(), &[]);
    let mut c = s.client();
    let alert = |id: u64, t: &str, dev: &str| {
        format!(
            "{{\"tenant\":7,\"alert_id\":{id},\"timestamp\":\"{t}\",\"detector\":\"EDR-{id}\",\"title\":\"Suspicious {id}\",\"category\":\"Execution\",\"techniques\":[\"T1059.001\"],\"entities\":[{{\"type\":\"Machine\",\"role\":\"Impacted\",\"value\":\"{dev}\"}}]}}\n"
        )
    };
    let first = alert(1001, "2024-06-01T10:00:00Z", "host-a")
        + &alert(1002, "2024-06-01T10:05:00Z", "host-a")
        + &alert(2001, "2024-06-01T10:06:00Z", "host-b");
    let r = c
        .post(
            "/v1/alerts",
            Some(&key),
            "application/x-ndjson",
            first.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let q = c
        .get("/v1/queue?top=100&status=all", Some(&key))
        .unwrap()
        .json();
    let threats = q["threats"].as_array().unwrap();
    assert_eq!(threats.len(), 2, "{q}");
    for t in threats {
        let id: u64 = t["id"].as_str().unwrap().parse().unwrap();
        assert!(id >= 1 << 63, "correlated ids have the top bit: {id}");
    }
    let sizes: Vec<u64> = threats
        .iter()
        .map(|t| t["n_alerts"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), 3);
    // analysts grade both loose threats before they merge: host-b's first
    let (a_id, b_id) = ((1u64 << 63) + 1001, (1u64 << 63) + 2001);
    for (id, body) in [
        (b_id, r#"{"grade":"FP","reason":"scanner on host-b"}"#),
        (a_id, r#"{"grade":"TP","reason":"real on host-a"}"#),
    ] {
        let r = verdict(&mut c, &key, &id.to_string(), body);
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // an alert on both hosts bridges them: one threat remains
    let bridge = "{\"tenant\":7,\"alert_id\":3001,\"timestamp\":\"2024-06-01T10:07:00Z\",\"detector\":\"EDR-x\",\"title\":\"Lateral\",\"category\":\"LateralMovement\",\"entities\":[{\"type\":\"Machine\",\"value\":\"host-a\"},{\"type\":\"Machine\",\"value\":\"host-b\"}]}\n";
    let r = c
        .post(
            "/v1/alerts",
            Some(&key),
            "application/x-ndjson",
            bridge.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let q = c
        .get("/v1/queue?top=100&status=all", Some(&key))
        .unwrap()
        .json();
    let threats = q["threats"].as_array().unwrap();
    assert_eq!(threats.len(), 1, "{q}");
    assert_eq!(threats[0]["n_alerts"], 4);
    let id = threats[0]["id"].as_str().unwrap();
    assert_eq!(
        id.parse::<u64>().unwrap(),
        (1u64 << 63) + 1001,
        "id = 2^63 + smallest alert id"
    );
    let d = c
        .get(&format!("/v1/threats/{id}"), Some(&key))
        .unwrap()
        .json();
    assert_eq!(d["evidence"].as_array().unwrap().len(), 5);
    // the merged threat keeps every verdict in the order given (host-b's carried over, naming
    // its threat), the latest is the queue's, it stays verdicted; the old id is gone
    let trail: Vec<(String, String, Value)> = d["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["grade"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap().to_string(),
                v["from_threat"].clone(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            (
                "FP".to_string(),
                "scanner on host-b".to_string(),
                Value::from(b_id.to_string())
            ),
            ("TP".to_string(), "real on host-a".to_string(), Value::Null),
        ]
    );
    assert_eq!(d["verdict"]["grade"], "TP");
    let open = c.get("/v1/queue?top=100", Some(&key)).unwrap().json();
    assert_eq!(open["total"], 0, "the merged threat is verdicted: {open}");
    assert_error(
        &c.get(&format!("/v1/threats/{b_id}"), Some(&key)).unwrap(),
        404,
        "not_found",
    );
    // a later verdict on the merged threat is its latest; the drift window counts each
    // analyst decision once (the carried copy is not a new one)
    let r = verdict(&mut c, &key, id, r#"{"grade":"BP"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    let d = c
        .get(&format!("/v1/threats/{id}"), Some(&key))
        .unwrap()
        .json();
    assert_eq!(d["verdicts"].as_array().unwrap().len(), 3);
    assert_eq!(d["verdict"]["grade"], "BP");
}

/// The service grades a tenant's incidents exactly as `threatrank score` grades the same rows.
#[test]
fn service_scores_equal_the_cli() {
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let key = add_key(&db, 3, "alice");
    let csv = tenant_csv(3, 120);
    let input = dir.path().join("in.csv");
    std::fs::write(&input, &csv).unwrap();
    let scores = dir.path().join("scores.csv");
    let o = common::run_os(&[
        "score".as_ref(),
        "--model".as_ref(),
        default_model().as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        scores.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let text = std::fs::read_to_string(&scores).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let mut cli: std::collections::BTreeMap<String, (String, String)> = Default::default();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        cli.insert(
            f[at("IncidentId")].to_string(),
            (
                f[at("priority")].to_string(),
                f[at("predicted_grade")].to_string(),
            ),
        );
    }
    let s = Server::start(&db, &default_model(), &[]);
    let mut c = s.client();
    assert_eq!(post_csv(&mut c, &key, &csv).status, 200);
    let q = c
        .get("/v1/queue?top=1000&status=all", Some(&key))
        .unwrap()
        .json();
    let threats = q["threats"].as_array().unwrap();
    assert_eq!(threats.len(), cli.len());
    for t in threats {
        let (prio, grade) = &cli[t["id"].as_str().unwrap()];
        assert_eq!(t["priority"].to_string(), *prio, "{t}");
        let full = match t["predicted"].as_str().unwrap() {
            "TP" => "TruePositive",
            "BP" => "BenignPositive",
            _ => "FalsePositive",
        };
        assert_eq!(full, grade, "{t}");
    }
}

/// A request over the deadline gets the JSON `timeout` error saying nothing was stored, and
/// nothing is, even later (before: the batch was committed seconds after the 503); the service
/// keeps serving.
#[test]
fn slow_requests_get_a_timeout_error() {
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let key = add_key(&db, 0, "alice");
    let s = Server::start(
        &db,
        &default_model(),
        &["--request-timeout-seconds", "0.001"],
    );
    let mut c = s.client();
    // storing (fsync) and scoring a few hundred rows takes far longer than 1 ms
    let r = post_csv(&mut c, &key, &tenant_csv(0, 400));
    assert_error(&r, 503, "timeout");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing of the batch was stored"),
        "{}",
        r.text()
    );
    // still serving: a static answer is ready at its first poll, inside any deadline
    assert_eq!(c.get("/openapi.json", None).unwrap().status, 200);
    // long after the answer, still nothing stored
    std::thread::sleep(std::time::Duration::from_secs(3));
    drop(s);
    let db = threatrank::service::Db::open(&db, 1).unwrap();
    assert_eq!(db.evidence_count(None).unwrap(), 0);
    assert_eq!(db.threat_count().unwrap(), 0);
}

/// Verdicts stored by the service fold into training: `threatrank retrain` writes a loadable
/// artifact whose card says what it learnt from, and a before/after report on held-out verdicts.
#[test]
fn retrain_folds_stored_verdicts_into_a_new_model() {
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let key = add_key(&db, 0, "alice");
    let csv = tenant_csv(0, 300);
    // the analysts' verdicts: the sample's own grades of those incidents
    let (grade_col, inc_col) = (common::col("IncidentGrade"), common::col("IncidentId"));
    let truth: std::collections::BTreeMap<String, String> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[inc_col].to_string(), f[grade_col].to_string())
        })
        .filter(|(_, g)| !g.is_empty())
        .collect();
    let s = Server::start(&db, &default_model(), &[]);
    let mut c = s.client();
    assert_eq!(post_csv(&mut c, &key, &csv).status, 200);
    let queue = ids(&c.get("/v1/queue?top=1000", Some(&key)).unwrap().json());
    let mut n = 0;
    for id in &queue {
        if let Some(g) = truth.get(id) {
            let r = verdict(&mut c, &key, id, &format!(r#"{{"grade":"{g}"}}"#));
            assert_eq!(r.status, 201, "{}", r.text());
            n += 1;
        }
    }
    assert!(n >= 10, "{n} verdicts");
    drop(s);
    let out = dir.path().join("new.json.gz");
    let json = dir.path().join("retrain.json");
    let o = common::run_os(&[
        "retrain".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
        "--model".as_ref(),
        default_model().as_os_str(),
        "--input".as_ref(),
        common::train_csv().as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        common::stdout(&o).contains("before (model in service)"),
        "{}",
        common::stdout(&o)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["verdicts"], n);
    let held = (n as f64 * 0.3).ceil() as u64;
    assert_eq!(r["held_out"], held);
    assert_eq!(r["train_verdicts"].as_u64().unwrap() + held, n);
    // the verdicted incidents are the sample's own, and the base input holds them too: the
    // held-out ones are left out of the model measured on them (counted from the base file)
    let base_ids: std::collections::BTreeSet<String> = std::fs::read_to_string(common::train_csv())
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(common::col("OrgId")) == Some("0"))
        .filter_map(|l| l.split(',').nth(inc_col).map(str::to_string))
        .collect();
    assert_eq!(r["skipped"], serde_json::json!([]));
    let held_ids = r["held_out_incidents"].as_array().unwrap();
    assert_eq!(held_ids.len() as u64, held);
    let in_base = held_ids
        .iter()
        .filter(|t| base_ids.contains(t.as_str().unwrap()))
        .count();
    assert!(in_base > 0, "fixture: held-out incidents in the base input");
    assert_eq!(r["held_in_base"], in_base);
    for side in ["before", "after"] {
        assert_eq!(r[side]["n"], held);
        for m in ["macro_f1", "accuracy"] {
            let v = r[side][m].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{side} {m} {v}");
        }
        assert!(r[side]["log_loss"].as_f64().unwrap() > 0.0);
    }
    let a = threatrank::train::Artifact::load(&out).expect("the new artifact loads");
    assert!(
        a.card.notes.iter().any(|n| n.contains("analyst verdicts")),
        "{:?}",
        a.card.notes
    );
    assert!(
        a.card.data.file.contains("verdicts from s.db"),
        "{}",
        a.card.data.file
    );
    // the new model serves
    let s = Server::start(&db, &out, &[]);
    let h = s.client().get("/healthz", None).unwrap().json();
    assert_eq!(h["status"], "ok");
    // too few verdicts: a clear error, no artifact
    let empty = dir.path().join("empty.db");
    add_key(&empty, 0, "x");
    let o = common::run_os(&[
        "retrain".as_ref(),
        "--db".as_ref(),
        empty.as_os_str(),
        "--model".as_ref(),
        default_model().as_os_str(),
        "--out".as_ref(),
        dir.path().join("none.json").as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("at least 10 are needed"),
        "{}",
        common::stderr(&o)
    );
    assert!(!dir.path().join("none.json").exists());
}

/// Drift: the tenant's report, a warning when analysts keep disagreeing, and the global report
/// released only once enough tenants contribute, without counts.
#[test]
fn drift_reports_per_tenant_and_globally_above_the_floor() {
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let keys: Vec<String> = (0..5)
        .map(|t| add_key(&db, t, &format!("analyst{t}")))
        .collect();
    let s = Server::start(&db, &default_model(), &[]);
    let mut c = s.client();
    assert_eq!(post_csv(&mut c, &keys[0], &tenant_csv(0, 400)).status, 200);
    let d = c.get("/v1/drift", Some(&keys[0])).unwrap();
    assert_eq!(d.status, 200, "{}", d.text());
    let d = d.json();
    assert!(
        ["ok", "warning", "insufficient_data"].contains(&d["status"].as_str().unwrap()),
        "{d}"
    );
    assert!(d["rows"].as_u64().unwrap() > 0);
    assert!(d["score_psi"].as_f64().is_some());
    assert!(
        d["global"].is_null(),
        "one tenant is below the floor of 5: {d}"
    );
    assert_eq!(d["thresholds"]["psi_warn"], 0.25);

    // analysts disagree with every predicted grade: agreement 0 < 0.6 over ≥ 30 verdicts
    let q = c.get("/v1/queue?top=1000", Some(&keys[0])).unwrap().json();
    let threats = q["threats"].as_array().unwrap();
    assert!(threats.len() >= 30, "{} threats", threats.len());
    for t in &threats[..30] {
        let other = if t["predicted"] == "TP" { "FP" } else { "TP" };
        let r = verdict(
            &mut c,
            &keys[0],
            t["id"].as_str().unwrap(),
            &format!(r#"{{"grade":"{other}"}}"#),
        );
        assert_eq!(r.status, 201);
    }
    let d = c.get("/v1/drift", Some(&keys[0])).unwrap().json();
    assert_eq!(d["status"], "warning", "{d}");
    assert_eq!(d["agreement"]["verdicts"], 30);
    assert_eq!(d["agreement"]["rate"], 0.0);
    assert!(
        d["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("agree")),
        "{d}"
    );
    // another tenant's drift is its own: no verdicts, no agreement warning
    assert_eq!(post_csv(&mut c, &keys[1], &tenant_csv(1, 100)).status, 200);
    let d1 = c.get("/v1/drift", Some(&keys[1])).unwrap().json();
    assert_eq!(d1["agreement"]["verdicts"], 0, "{d1}");
    assert!(d1["global"].is_null());

    for (t, key) in keys.iter().enumerate().skip(2) {
        assert_eq!(post_csv(&mut c, key, &tenant_csv(t as u64, 60)).status, 200);
    }
    let d = c.get("/v1/drift", Some(&keys[1])).unwrap().json();
    let g = &d["global"];
    assert!(g.is_object(), "five tenants reach the floor: {d}");
    assert!(g["score_psi"].as_f64().is_some());
    assert!(
        g.get("rows").is_none(),
        "the global report carries no counts: {g}"
    );
    assert!(
        g["agreement"].is_null(),
        "verdicts come from one tenant only: {g}"
    );
    assert_eq!(d["thresholds"]["max_tenant_share_global"], 0.5);
    drop(c);
    drop(s);
    // Dominance: tenant 0 holds 67 of the 229 threats (0.29, counted from the sample's
    // incident ids). Under a rule of at most 0.25 per tenant the global view is withheld even
    // though five tenants contribute; at 0.3 it is released.
    for (share, released) in [("0.25", false), ("0.3", true)] {
        let s = Server::start(&db, &default_model(), &["--global-max-tenant-share", share]);
        let d = s.client().get("/v1/drift", Some(&keys[1])).unwrap().json();
        assert_eq!(d["global"].is_object(), released, "share {share}: {d}");
    }
}

// ---- hardening: limits, timeouts, shutdown ---------------------------------------------------

/// A fresh database with one key for `tenant` ("alice") and a service on it with `flags`:
/// (folder, database path, key, server). Keep the folder alive as long as the server.
fn service_with(tenant: u64, flags: &[&str]) -> (tempfile::TempDir, PathBuf, String, Server) {
    let dir = common::tmp();
    let db = dir.path().join("s.db");
    let key = add_key(&db, tenant, "alice");
    let s = Server::start(&db, &default_model(), flags);
    (dir, db, key, s)
}

/// Sends raw bytes on a new connection (from another thread, so an answer that comes before
/// the last byte is read) and reads what comes back within `wait`: the status code and the
/// text read; `None` when no status line came in time.
fn raw_exchange(
    addr: SocketAddr,
    bytes: &[u8],
    wait: std::time::Duration,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(wait)).unwrap();
    let mut w = s.try_clone().unwrap();
    let bytes = bytes.to_vec();
    // the service may answer and close before taking the whole body: write errors are fine
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let start = std::time::Instant::now();
    // until the JSON body has arrived (the answers here are small) or time is up
    while start.elapsed() < wait {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let t = String::from_utf8_lossy(&buf);
                if t.contains("\r\n\r\n") && t.trim_end().ends_with('}') {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((code, text))
}

/// Resident memory of a process now, and at its peak, MiB (`/proc/PID/status`).
fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib = |field: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The key is checked before a byte of the body is read: a client without a key gets 401 at
/// once whatever it declares, and a keyed request declaring more than `--max-body-bytes` gets
/// 413 at once (before: the body was read first, so a keyless 10^11-byte declaration was held
/// until the request deadline and answered 503).
#[test]
fn bodies_are_read_only_after_the_key_and_within_the_limits() {
    let (_dir, _db, key, s) = service_with(0, &[]);
    let wait = std::time::Duration::from_secs(5);
    let head = |auth: &str, len: u64| {
        format!(
            "POST /v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n{auth}\
             Content-Length: {len}\r\n\r\n"
        )
    };
    for len in [100_000_000_000u64, 8 << 20, 1000] {
        // only the head and a few bytes of the body are sent: the answer cannot wait for it
        let req = format!("{}OrgId,", head("", len));
        let (code, text) = raw_exchange(s.addr, req.as_bytes(), wait)
            .unwrap_or_else(|| panic!("no answer within {wait:?} to a keyless {len}-byte body"));
        assert_eq!(code, 401, "{text}");
        assert!(text.contains("\"unauthorized\""), "{text}");
        let req = format!("{}OrgId,", head("Authorization: Bearer trk_nope\r\n", len));
        let (code, _) = raw_exchange(s.addr, req.as_bytes(), wait).expect("answer");
        assert_eq!(code, 401);
    }
    let req = head(&format!("Authorization: Bearer {key}\r\n"), 100_000_000_000);
    let (code, text) = raw_exchange(s.addr, req.as_bytes(), wait).expect("413 at once");
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("\"payload_too_large\""), "{text}");
    assert!(
        text.contains(&(8u64 << 20).to_string()),
        "names the limit: {text}"
    );
    // a chunked body (no length declared) is cut off as it passes the limit
    let mut chunked = format!(
        "POST /v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n\
         Authorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let piece = vec![b'x'; 1 << 20];
    for _ in 0..9 {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(&piece);
        chunked.extend_from_slice(b"\r\n");
    }
    let (code, text) = raw_exchange(s.addr, &chunked, wait).expect("answer to a chunked body");
    assert_eq!(code, 413, "{text}");
    // the service still answers
    assert_eq!(s.client().get("/healthz", None).unwrap().status, 200);
}

/// Bodies in memory are bounded over all requests (`--max-inflight-body-bytes`): 24 clients
/// (18 keyed, 6 without a key) each send 7 MiB of a declared 8 MiB body and stall; the service
/// holds at most the budget (16 MiB) of them, and its resident memory grows by far less than
/// the 168 MiB the clients sent (measured: 37 -> 52 MiB; with the budget off the test fails:
/// every keyed body is read).
#[test]
fn request_bodies_in_memory_stay_within_the_budget() {
    use std::io::Write;
    let (_dir, _db, key, s) = service_with(
        0,
        &[
            "--max-inflight-body-bytes",
            &(16u64 << 20).to_string(),
            "--request-timeout-seconds",
            "60",
        ],
    );
    // warm up (first request, first scoring) before the baseline
    let r = post_csv(&mut s.client(), &key, &tenant_csv(0, 20));
    assert_eq!(r.status, 200, "{}", r.text());
    let (base, _) = rss_mib(s.pid());
    let clients = 24;
    let sent = 7usize << 20;
    let mut socks = Vec::new();
    let mut writers = Vec::new();
    for i in 0..clients {
        let sock = std::net::TcpStream::connect(s.addr).unwrap();
        sock.set_write_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let auth = if i % 4 == 3 {
            String::new()
        } else {
            format!("Authorization: Bearer {key}\r\n")
        };
        let head = format!(
            "POST /v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n{auth}\
             Content-Length: {}\r\n\r\n",
            8 << 20
        );
        let mut w = sock.try_clone().unwrap();
        socks.push(sock);
        writers.push(std::thread::spawn(move || {
            let mut n = 0usize;
            if w.write_all(head.as_bytes()).is_ok() {
                let piece = vec![b'x'; 64 << 10];
                while n < sent && w.write_all(&piece).is_ok() {
                    n += piece.len();
                }
            }
        }));
    }
    // every writer has sent its 7 MiB, or is blocked because the service does not read it
    std::thread::sleep(std::time::Duration::from_secs(4));
    let (now, peak) = rss_mib(s.pid());
    eprintln!(
        "RSS {base:.0} MiB before, {now:.0} MiB with {clients} stalled bodies, peak {peak:.0}"
    );
    assert!(
        now - base < 60.0,
        "RSS grew by {:.0} MiB holding {clients} bodies of 7 MiB (budget 16 MiB)",
        now - base
    );
    for sock in &socks {
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
    for w in writers {
        w.join().unwrap();
    }
    // the cut-off requests gave their reservations back: a new batch is read and stored
    let mut c = s.client().with_timeout(std::time::Duration::from_secs(30));
    let r = post_csv(&mut c, &key, &tenant_csv(0, 40));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A connection that sends no request (or trickles its headers) is closed after
/// `--header-timeout-seconds`, and 300 of them do not keep `/healthz` from answering
/// (before: no header timeout, silent connections stayed open for ever).
#[test]
fn silent_connections_are_closed_and_do_not_block_the_service() {
    use std::io::{Read, Write};
    let (_dir, _db, _, s) = service_with(0, &["--header-timeout-seconds", "1"]);
    let mut silent: Vec<std::net::TcpStream> = (0..300)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(s.addr).unwrap();
            if i % 2 == 1 {
                c.write_all(b"GET /v1/queue HTTP/1.1\r\nHost: x\r\nAuthor")
                    .unwrap();
            }
            c
        })
        .collect();
    let t = std::time::Instant::now();
    let mut c = s.client().with_timeout(std::time::Duration::from_secs(5));
    assert_eq!(c.get("/healthz", None).unwrap().status, 200);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    // every silent connection is closed by the service (EOF, or a 408 then EOF)
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let mut closed = 0;
    for c in &mut silent {
        c.set_read_timeout(Some(std::time::Duration::from_secs(3)))
            .unwrap();
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(_) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {} // still open: the read timed out
        }
    }
    assert_eq!(
        closed,
        silent.len(),
        "connections closed by the header timeout"
    );
    // a keep-alive connection idle past the timeout after an answer is closed too
    let mut idle = std::net::TcpStream::connect(s.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(std::time::Duration::from_secs(4)))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let ended = loop {
        match idle.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        ended,
        "an idle keep-alive connection stays open past the header timeout"
    );
}

/// SIGTERM ends the service within `--shutdown-grace-seconds` even with a client stalled in
/// its body and another in its headers (before: it waited for them).
#[test]
fn sigterm_stops_within_the_grace_period() {
    use std::io::Write;
    let (_dir, _db, key, mut s) = service_with(
        0,
        &[
            "--shutdown-grace-seconds",
            "1",
            "--header-timeout-seconds",
            "600",
            "--request-timeout-seconds",
            "600",
        ],
    );
    let mut body_stall = std::net::TcpStream::connect(s.addr).unwrap();
    body_stall
        .write_all(
            format!(
                "POST /v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n\
                 Authorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\nOrgId,"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut head_stall = std::net::TcpStream::connect(s.addr).unwrap();
    head_stall
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t = std::time::Instant::now();
    let code = s.terminate_within(std::time::Duration::from_secs(8));
    assert!(
        code.is_some(),
        "still running {:?} after SIGTERM with stalled clients",
        t.elapsed()
    );
    eprintln!("stopped {:?} after SIGTERM", t.elapsed());
    drop((body_stall, head_stall));
}

/// Small hardening items: no caching of answers, one URL per threat, a verdict body is an
/// object, key labels without control or direction characters, a database readable by its
/// owner only.
#[test]
fn answers_ids_verdict_bodies_labels_and_file_modes_are_strict() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, db, key, s) = service_with(0, &[]);
    let mut c = s.client();
    let r = post_csv(&mut c, &key, &tenant_csv(0, 30));
    assert_eq!(r.status, 200, "{}", r.text());
    let q = c.get("/v1/queue", Some(&key)).unwrap();
    assert_eq!(q.header("cache-control"), Some("no-store"));
    let id = ids(&q.json())[0].clone();
    let missing = c.get("/v1/threats/0", Some(&key)).unwrap();
    assert_eq!(missing.header("cache-control"), Some("no-store"));
    assert_eq!(
        c.get(&format!("/v1/threats/{id}"), Some(&key))
            .unwrap()
            .status,
        200
    );
    for alias in [
        format!("+{id}"),
        format!("0{id}"),
        format!("00{id}"),
        format!("{id} "),
    ] {
        let alias = alias.replace('+', "%2B").replace(' ', "%20");
        assert_error(
            &c.get(&format!("/v1/threats/{alias}"), Some(&key)).unwrap(),
            404,
            "not_found",
        );
    }
    for body in [r#"["TP"]"#, r#"["TP","x"]"#, r#""TP""#, "1"] {
        assert_error(&verdict(&mut c, &key, &id, body), 400, "bad_request");
    }
    assert_eq!(verdict(&mut c, &key, &id, r#"{"grade":"TP"}"#).status, 201);
    for label in ["eve\n3  0  mallory", "a\u{202E}lice", "bell\u{7}"] {
        let o = keys_add(&db, 0, label);
        assert!(!o.status.success(), "label {label:?} accepted");
        assert!(
            common::stderr(&o).contains("control or text-direction"),
            "{}",
            common::stderr(&o)
        );
    }
    drop(s);
    for f in [db.clone(), db.with_extension("db-wal")] {
        if f.exists() {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}: mode {mode:o}", f.display());
        }
    }
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// A request cannot expand without bound: an alert with more entities than
/// `--max-entities-per-alert`, a text value over `--max-text-bytes` (JSONL and CSV alike) and a
/// batch over `--max-batch-rows` evidence rows are refused naming the limit. The issue's attack
/// (16 alerts × 32 KB title × 2,300 entities, 2.3 MB: before, 36,800 evidence rows, GBs of
/// memory, seconds of scoring) is now 16 rejections, nothing stored.
#[test]
fn one_request_cannot_expand_without_bound() {
    let (_dir, _db, key, s) = service_with(0, &["--max-batch-rows", "100"]);
    let mut c = s.client().with_timeout(std::time::Duration::from_secs(60));
    let post_jsonl = |c: &mut Client, body: &str| {
        c.post(
            "/v1/alerts",
            Some(&key),
            "application/x-ndjson",
            body.as_bytes(),
        )
        .unwrap()
    };
    let alert = |id: u64, title: &str, entities: usize| {
        let ents: Vec<String> = (0..entities)
            .map(|i| format!(r#"{{"type":"Machine","value":"host-{id}-{i}"}}"#))
            .collect();
        format!(
            r#"{{"tenant":0,"alert_id":{id},"incident_id":{id},"timestamp":"2024-06-01T00:00:00Z","detector":"d","title":"{title}","category":"Execution","entities":[{}]}}"#,
            ents.join(",")
        ) + "\n"
    };
    // the attack: nothing of it is stored
    let (_, peak_before) = rss_mib(s.pid());
    let attack: String = (0..16)
        .map(|i| alert(900 + i, &"x".repeat(32 << 10), 2300))
        .collect();
    assert!(attack.len() > 2_000_000, "{}", attack.len());
    let r = post_jsonl(&mut c, &attack);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        (j["records"].as_u64(), j["accepted"].as_u64()),
        (Some(16), Some(0))
    );
    for rej in j["rejections"].as_array().unwrap() {
        assert_eq!(rej["column"], "entities", "{rej}");
        assert!(
            rej["reason"]
                .as_str()
                .unwrap()
                .contains("2300 entities, over the limit of 256 per alert"),
            "{rej}"
        );
    }
    let (_, peak_after) = rss_mib(s.pid());
    eprintln!("peak RSS {peak_before:.0} -> {peak_after:.0} MiB for the 2.3 MB attack");
    assert!(
        peak_after - peak_before < 200.0,
        "{peak_before} -> {peak_after} MiB"
    );
    // a long title, in JSONL and in CSV: the record is rejected naming the field and limit
    let r = post_jsonl(
        &mut c,
        &(alert(1, &"t".repeat(3000), 2) + &alert(2, "ok", 2)),
    );
    let j = r.json();
    assert_eq!(
        (j["accepted"].as_u64(), j["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{j}"
    );
    let rej = &j["rejections"][0];
    assert_eq!(rej["column"], "title", "{rej}");
    assert!(
        rej["reason"]
            .as_str()
            .unwrap()
            .contains("3000 bytes, over the limit of 2048"),
        "{rej}"
    );
    let mut rows = tenant_rows(0, 3);
    rows[1][common::col("AlertTitle")] = "t".repeat(3000);
    let r = post_csv(
        &mut c,
        &key,
        &common::csv_text(&common::header_names(), &rows),
    );
    let j = r.json();
    assert_eq!(
        (j["accepted"].as_u64(), j["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{j}"
    );
    assert_eq!(j["rejections"][0]["column"], "AlertTitle", "{j}");
    assert!(
        j["rejections"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("limit of 2048"),
        "{j}"
    );
    // a batch over the row limit: 413 naming it, nothing of it stored
    let before = c
        .get("/v1/queue?status=all&top=1000", Some(&key))
        .unwrap()
        .json()["total"]
        .as_u64()
        .unwrap();
    let r = post_csv(&mut c, &key, &tenant_csv(0, 150));
    assert_error(&r, 413, "payload_too_large");
    assert!(r.text().contains("limit of 100"), "{}", r.text());
    let after = c
        .get("/v1/queue?status=all&top=1000", Some(&key))
        .unwrap()
        .json()["total"]
        .as_u64()
        .unwrap();
    assert_eq!(before, after);
}
