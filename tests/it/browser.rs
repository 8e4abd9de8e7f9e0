//! The hunters' web page (`GET /`, `src/service/web/index.html`) end to end in headless
//! Chromium, driven through chromedriver with the W3C WebDriver JSON protocol over HTTP (the
//! crate's own blocking client; no WebDriver crate).
//!
//! One tenant's rows of the shipped sample are pushed into a fresh `threatrank serve`; one
//! incident's alert title is replaced by an HTML payload, since titles are attacker-influenced.
//! In the browser: a wrong key is refused on the login form; the right key shows the queue
//! (every threat, the payload as plain text); the payload's threat opens with the payload as
//! text in its title and evidence, no element made of it and no script run; sorting and a
//! filter agree with the API; a threat opens with its reasons chart; a TP verdict is recorded; the service is killed (`SIGKILL`)
//! and started again on the same database; the reloaded page (still logged in from
//! sessionStorage), after logging out and in again, shows the verdict in the threat's history.
//!
//! `THREATRANK_BROWSER_SCREENSHOT=FILE.png` saves the page with the threat's detail open; a
//! timed-out wait saves `browser-failure.png` in Cargo's target tmp folder.
//!
//! Needs Debian's `chromium` and `chromium-driver`: without them the test fails, saying how to
//! install them (`.ci/run` installs them).

use crate::common::*;
use crate::service::add_key;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use threatrank::service::client::Client;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C WebDriver's key of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Alert title of one incident's rows: markup that would run if the page used innerHTML.
/// Markup, and a right-to-left override (U+202E) that would reverse the page's text after it.
const PAYLOAD: &str = "\u{202E}<img src=x onerror=window.__xss=1>";
/// Rows of the tenant pushed into the service.
const ROWS: usize = 300;
/// Patience for anything the page or a process has to do.
const PATIENCE: Duration = Duration::from_secs(30);

/// A child process killed and reaped on drop, panics included. Started in its own process
/// group, which the drop also kills (chromedriver's browser would outlive chromedriver).
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Panics with the process's output when it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}):\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// SIGKILL to the process group, then reap.
    fn kill(&mut self) {
        let pgid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Polls `f` until it gives `Some`, or panics after [`PATIENCE`] with `what` and `context()`.
fn wait_for<T>(
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {PATIENCE:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `threatrank serve` on a database.
struct Service {
    proc: Proc,
    addr: SocketAddr,
}

impl Service {
    /// Starts the service on `listen` (port 0: any free port) and waits until it answers
    /// `/healthz`; the address is the one it printed (`listening on http://ADDR`).
    fn start(dir: &Path, db: &Path, listen: SocketAddr, run: usize) -> Service {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json.gz");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_threatrank"));
        cmd.arg("serve")
            .arg("--model")
            .arg(&model)
            .arg("--db")
            .arg(db)
            .arg("--listen")
            .arg(listen.to_string());
        let log = dir.join(format!("serve-{run}.log"));
        let mut proc = Proc::spawn("threatrank serve", &mut cmd, log.clone());
        let addr: SocketAddr = wait_for(
            "threatrank serve to print its address",
            || {
                proc.assert_running();
                std::fs::read_to_string(&log)
                    .ok()?
                    .lines()
                    .find_map(|l| l.strip_prefix("listening on http://")?.trim().parse().ok())
            },
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        let mut http = Client::new(addr).with_timeout(Duration::from_secs(5));
        wait_for(
            "GET /healthz of threatrank serve",
            || {
                proc.assert_running();
                http.get("/healthz", None).ok().filter(|r| r.status == 200)
            },
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        Service { proc, addr }
    }
}

/// A chromedriver session of headless Chromium; deleted on drop (which closes the browser).
struct Browser {
    http: Client,
    session: String,
}

impl Browser {
    fn open(driver: SocketAddr, profile: &Path) -> Browser {
        let mut http = Client::new(driver);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1400,1600",
                ],
            },
        }}});
        let v = call(&mut http, "POST", "/session", &caps).expect("new WebDriver session");
        let session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {v}"))
            .to_string();
        let mut b = Browser { http, session };
        b.cmd(
            "POST",
            "/timeouts",
            &json!({"script": 10_000, "pageLoad": 30_000}),
        );
        b
    }

    /// A session command; panics on a WebDriver error.
    fn cmd(&mut self, method: &str, path: &str, body: &Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        call(&mut self.http, method, &path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn goto(&mut self, url: &str) {
        self.cmd("POST", "/url", &json!({ "url": url }));
    }

    /// Runs a script (`return …`) in the page and gives its value.
    fn js(&mut self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            &json!({"script": script, "args": []}),
        )
    }

    /// The element reference of the first match of a CSS selector.
    fn find(&mut self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            &json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element reference for {css}: {v}"))
            .to_string()
    }

    fn click(&mut self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), &json!({}));
    }

    /// Opens a threat: scrolls its queue row to the middle of the view (at the edge the
    /// table's sticky header would take the click), then clicks it.
    fn click_row(&mut self, id: &str) {
        let css = format!("#queue tr[data-id=\"{id}\"]");
        self.js(&format!(
            "document.querySelector({}).scrollIntoView({{block: 'center'}}); return null",
            json!(css)
        ));
        self.click(&css);
    }

    fn type_into(&mut self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), &json!({}));
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            &json!({ "text": text }),
        );
    }

    /// What a failed wait shows: the URL, `#error` and the start of the page's text.
    fn context(&mut self) -> String {
        let v = self.js(
            "return location.href + '\\n#error: ' + document.querySelector('#error').textContent \
             + '\\n' + document.body.innerText.slice(0, 2000)",
        );
        v.as_str().unwrap_or_default().to_string()
    }

    /// Polls a script until it returns something other than `null`/`false`.
    fn wait_js(&mut self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            if Instant::now() > deadline {
                let ctx = self.context();
                let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-failure.png");
                self.screenshot(&shot);
                panic!(
                    "timed out after {PATIENCE:?} waiting for {what} (screenshot: {})\n{ctx}",
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG of the window (best effort: this also runs while a test is failing).
    fn screenshot(&mut self, path: &Path) {
        let path_s = format!("/session/{}/screenshot", self.session);
        if let Ok(v) = call(&mut self.http, "GET", &path_s, &Value::Null) {
            use base64::Engine as _;
            if let Some(png) = v
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            {
                let _ = std::fs::write(path, png);
            }
        }
    }

    /// `data-id`s of the queue's rows, in the order shown.
    fn row_ids(&mut self) -> Vec<String> {
        let v = self.js(
            "return Array.from(document.querySelectorAll('#queue tbody tr[data-id]'), r => r.dataset.id)",
        );
        serde_json::from_value(v).expect("row ids")
    }

    /// Waits until the queue shows exactly `n` rows; returns their ids.
    fn wait_rows(&mut self, n: usize) -> Vec<String> {
        let script = format!(
            "const r = document.querySelectorAll('#queue tbody tr[data-id]'); \
             return !document.querySelector('#app').hidden && r.length === {n}"
        );
        self.wait_js(&format!("{n} queue rows"), &script);
        self.row_ids()
    }

    fn text(&mut self, css: &str) -> String {
        let v = self.js(&format!(
            "const e = document.querySelector({}); return e ? e.textContent : null",
            json!(css)
        ));
        v.as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = self.http.request("DELETE", &path, &[], b"");
    }
}

/// One WebDriver HTTP call: the response's `value`, or the WebDriver error in words.
fn call(http: &mut Client, method: &str, path: &str, body: &Value) -> Result<Value, String> {
    let bytes = if method == "GET" || method == "DELETE" {
        Vec::new()
    } else {
        serde_json::to_vec(body).expect("JSON")
    };
    let r = http
        .request(
            method,
            path,
            &[("Content-Type", "application/json; charset=utf-8")],
            &bytes,
        )
        .map_err(|e| format!("I/O: {e}"))?;
    let v = r.json();
    if r.status != 200 {
        return Err(format!("HTTP {}: {}", r.status, v["value"]));
    }
    Ok(v["value"].clone())
}

/// The tenant with the most rows in the shipped sample (ties: smallest id), and its first
/// [`ROWS`] data lines with one incident's titles replaced by [`PAYLOAD`].
fn tenant_rows() -> (String, String) {
    let (header, lines) = sample();
    let org = col("OrgId");
    let inc = col("IncidentId");
    let title = col("AlertTitle");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in lines {
        *counts.entry(l.split(',').nth(org).unwrap()).or_default() += 1;
    }
    let tenant = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(t, _)| t.to_string())
        .unwrap();
    let mut rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|r| r[org] == tenant)
        .take(ROWS)
        .collect();
    let hostile = rows[0][inc].clone();
    for r in rows.iter_mut().filter(|r| r[inc] == hostile) {
        r[title] = PAYLOAD.to_string();
    }
    let header: Vec<String> = header.split(',').map(str::to_string).collect();
    (tenant, csv_text(&header, &rows))
}

/// Revokes the key labelled `label` (its id from `keys list`).
fn revoke_key(db: &Path, label: &str) {
    let o = run_os(&[
        "keys".as_ref(),
        "list".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
    ]);
    assert!(o.status.success(), "keys list failed: {}", stderr(&o));
    let list = stdout(&o);
    let id = list
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&label))
        .and_then(|f| f.first().map(|id| id.to_string()))
        .unwrap_or_else(|| panic!("no key labelled {label} in:\n{list}"));
    let o = run_os(&[
        "keys".as_ref(),
        "revoke".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
        "--key-id".as_ref(),
        id.as_ref(),
    ]);
    assert!(o.status.success(), "keys revoke failed: {}", stderr(&o));
}

/// Panics, saying how to install them, when the browser or its driver is missing.
fn require_browser() {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {}: install Debian's browser with `apt-get install -y --no-install-recommends \
         chromium chromium-driver`",
        missing.join(" and ")
    );
}

#[test]
fn hunter_page_queue_detail_verdict_survives_restart() {
    require_browser();
    let started = Instant::now();
    let dir = tmp();
    let db = dir.path().join("threatrank.db");
    let label = "alice@soc";
    let (tenant, csv) = tenant_rows();
    let key = add_key(&db, tenant.parse().expect("numeric OrgId"), label);

    // the service, fed through the API as a pipeline would
    let mut service = Service::start(
        dir.path(),
        &db,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        1,
    );
    let addr = service.addr;
    let mut api = Client::new(addr);
    let r = api
        .post("/v1/alerts", Some(&key), "text/csv", csv.as_bytes())
        .expect("POST /v1/alerts");
    assert!(
        (200..300).contains(&r.status),
        "POST /v1/alerts: {} {}",
        r.status,
        r.text()
    );
    let ingest = r.json();
    assert_eq!(ingest["records"], json!(ROWS), "{ingest}");
    assert_eq!(ingest["accepted"], json!(ROWS), "{ingest}");
    let q = api
        .get("/v1/queue?top=200&status=all", Some(&key))
        .expect("GET /v1/queue")
        .json();
    let threats: Vec<Value> = q["threats"].as_array().cloned().unwrap_or_default();
    assert!(threats.len() >= 3, "too few threats to browse: {q}");
    let by_id: BTreeMap<String, &Value> = threats
        .iter()
        .map(|t| (t["id"].as_str().unwrap().to_string(), t))
        .collect();
    let api_order: Vec<String> = threats
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    let hostile = threats
        .iter()
        .find(|t| t["title"] == json!(PAYLOAD))
        .unwrap_or_else(|| panic!("no threat titled with the payload in {q}"));
    let hostile_id = hostile["id"].as_str().unwrap().to_string();

    // the browser
    let driver_port = free_port();
    let mut chromedriver = Proc::spawn(
        "chromedriver",
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .arg("--allowed-ips=127.0.0.1"),
        dir.path().join("chromedriver.log"),
    );
    let driver = SocketAddr::from((Ipv4Addr::LOCALHOST, driver_port));
    let mut probe = Client::new(driver).with_timeout(Duration::from_secs(5));
    wait_for(
        "chromedriver /status ready",
        || {
            chromedriver.assert_running();
            call(&mut probe, "GET", "/status", &Value::Null)
                .ok()
                .filter(|v| v["ready"] == json!(true))
        },
        || std::fs::read_to_string(dir.path().join("chromedriver.log")).unwrap_or_default(),
    );
    let profile = dir.path().join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let mut b = Browser::open(driver, &profile);
    let page = format!("http://{addr}/");
    b.goto(&page);

    // a wrong key: the error in words, still on the login form, nothing stored
    b.wait_js(
        "the login form",
        "return !document.querySelector('#login-form').hidden",
    );
    b.type_into("#key", "tr_not-a-key");
    b.click("#login");
    let err = b.wait_js(
        "the error of a wrong key",
        "const e = document.querySelector('#error'); return !e.hidden && e.textContent",
    );
    let err = err.as_str().unwrap_or_default();
    assert!(err.contains("401") && err.contains("refused"), "{err}");
    let state = b.js(
        "return [document.querySelector('#login-form').hidden, document.querySelector('#app').hidden, \
         sessionStorage.length, document.querySelectorAll('#queue tbody tr[data-id]').length]",
    );
    assert_eq!(state, json!([false, true, 0, 0]), "after a wrong key");

    // the right key: the whole queue in the API's order, the payload shown as text
    b.type_into("#key", &key);
    b.click("#login");
    let rows = b.wait_rows(threats.len());
    assert_eq!(rows, api_order, "page order = API order");
    assert_eq!(b.text("#error"), "", "no error after logging in");
    let xss = b.js(&format!(
        "const r = document.querySelector('#queue tr[data-id=\"{hostile_id}\"]'); \
         return [r.textContent.includes({}), document.querySelectorAll('#queue img').length, \
         typeof window.__xss]",
        json!(PAYLOAD)
    ));
    assert_eq!(
        xss,
        json!([true, 0, "undefined"]),
        "the payload is text, not markup"
    );
    // the payload's own threat opened: the payload in its title and evidence as text, no
    // element made of it, no script run
    b.click_row(&hostile_id);
    b.wait_js(
        "the payload's threat",
        &format!(
            "const d = document.querySelector('#detail'); \
             return !d.hidden && d.dataset.id === '{hostile_id}' && \
             document.querySelectorAll('#evidence tbody tr').length > 0"
        ),
    );
    let n_hostile = api
        .get(&format!("/v1/threats/{hostile_id}"), Some(&key))
        .expect("GET threat")
        .json()["evidence"]
        .as_array()
        .map_or(0, |e| {
            e.iter().filter(|e| e["title"] == json!(PAYLOAD)).count()
        });
    assert!(n_hostile > 0, "the payload's threat has payload rows");
    let xss = b.js(&format!(
        "const p = {}; \
         return [document.querySelector('#d-title').textContent.startsWith(p), \
         Array.from(document.querySelectorAll('#evidence tbody td'), td => td.textContent) \
           .filter(t => t === p).length, \
         document.querySelectorAll('img').length, typeof window.__xss]",
        json!(PAYLOAD)
    ));
    assert_eq!(
        xss,
        json!([true, n_hostile, 0, "undefined"]),
        "the payload in the detail is text, not markup"
    );
    // the override stays inside the title: the id after it is its own isolated element, laid
    // out to the right of the title (with the override leaking, the line runs right to left
    // and the id lands on the left)
    let bidi = b.js("const s = document.querySelectorAll('#d-title span'); \
         if (s.length !== 2) return ['spans', s.length]; \
         return [getComputedStyle(s[0]).unicodeBidi, s[1].textContent.trim(), \
           s[0].getBoundingClientRect().right <= s[1].getBoundingClientRect().left + 0.5]");
    assert_eq!(
        bidi,
        json!(["isolate", format!("#{hostile_id}"), true]),
        "a direction override in a title does not reorder the page's text"
    );
    // drift: the page shows the status the API gives
    let drift = api.get("/v1/drift", Some(&key)).expect("GET /v1/drift");
    assert_eq!(drift.status, 200, "{}", drift.text());
    let want_drift = drift.json()["status"]
        .as_str()
        .expect("drift status")
        .to_string();
    b.wait_js(
        &format!("drift status {want_drift}"),
        &format!(
            "return document.querySelector('#drift').dataset.status === {}",
            json!(want_drift)
        ),
    );
    eprintln!("drift: HTTP {} → page shows {want_drift}", drift.status);

    // sorting by alert count, both ways, agrees with the API's numbers
    let n_alerts = |id: &String| by_id[id]["n_alerts"].as_u64().unwrap();
    b.click("#queue th[data-sort=n_alerts]");
    let desc = b.row_ids();
    assert_eq!(desc.len(), threats.len());
    assert!(
        desc.windows(2).all(|w| n_alerts(&w[0]) >= n_alerts(&w[1])),
        "n_alerts desc: {desc:?}"
    );
    b.click("#queue th[data-sort=n_alerts]");
    let asc = b.row_ids();
    assert!(
        asc.windows(2).all(|w| n_alerts(&w[0]) <= n_alerts(&w[1])),
        "n_alerts asc: {asc:?}"
    );
    b.click("#queue th[data-sort=priority]");
    assert_eq!(
        b.row_ids(),
        api_order,
        "priority desc is the API's order (ties keep it)"
    );

    // filtering by predicted grade shows exactly the API's threats of that grade
    let grade = threats[0]["predicted"].as_str().unwrap().to_string();
    b.click(&format!("#filter-grade option[value={grade}]"));
    let want: Vec<String> = api_order
        .iter()
        .filter(|id| by_id[*id]["predicted"] == json!(grade))
        .cloned()
        .collect();
    assert_eq!(b.wait_rows(want.len()), want, "grade filter {grade}");
    b.click("#filter-grade option[value=all]");
    b.wait_rows(threats.len());

    // open the top threat: its detail and reasons chart
    let target = api_order[0].clone();
    let detail = api
        .get(&format!("/v1/threats/{target}"), Some(&key))
        .expect("GET threat")
        .json();
    b.click_row(&target);
    b.wait_js(
        "the threat's detail",
        &format!(
            "const d = document.querySelector('#detail'); return !d.hidden && d.dataset.id === '{target}'"
        ),
    );
    let n_reasons = detail["reasons"].as_array().map_or(0, Vec::len);
    let chart = b.js(
        "return [document.querySelectorAll('#reasons-chart g.reason rect').length, \
         document.querySelectorAll('#verdicts li').length, \
         document.querySelectorAll('#evidence tbody tr').length]",
    );
    let n_evidence = detail["evidence"].as_array().map_or(0, Vec::len);
    assert_eq!(
        chart,
        json!([n_reasons, 0, n_evidence]),
        "chart bars, verdicts, evidence rows"
    );
    assert!(n_reasons > 0, "the top threat has reasons: {detail}");

    if let Ok(shot) = std::env::var("THREATRANK_BROWSER_SCREENSHOT") {
        b.screenshot(Path::new(&shot));
    }

    // one click: TP with a reason
    b.type_into("#verdict-reason", "beaconing confirmed");
    b.click("#detail button[data-grade=TP]");
    b.wait_js(
        "the verdict to be recorded",
        "return document.querySelector('#verdict-status').textContent === 'recorded TP'",
    );
    b.wait_js(
        "the verdict in the history and the queue row",
        &format!(
            "return document.querySelectorAll('#verdicts li[data-grade=TP]').length === 1 && \
             document.querySelector('#queue tr[data-id=\"{target}\"] td:last-child').textContent.includes('TP')"
        ),
    );
    let stored = api
        .get(&format!("/v1/threats/{target}"), Some(&key))
        .expect("GET threat")
        .json();
    let v = &stored["verdicts"][0];
    assert_eq!(
        (&v["grade"], &v["analyst"], &v["reason"]),
        (&json!("TP"), &json!(label), &json!("beaconing confirmed")),
        "{stored}"
    );

    // kill -9 and start again on the same database and port
    service.proc.kill();
    drop(service);
    let service = Service::start(dir.path(), &db, addr, 2);
    assert_eq!(
        service.addr, addr,
        "same origin, so sessionStorage survives the reload"
    );

    // reload: still logged in from sessionStorage; log out and in again
    b.cmd("POST", "/refresh", &json!({}));
    b.wait_rows(threats.len());
    b.click("#logout");
    let out = b.wait_js(
        "the login form after logging out",
        "return !document.querySelector('#login-form').hidden && \
         [sessionStorage.length, document.querySelectorAll('#queue tbody tr[data-id]').length]",
    );
    assert_eq!(
        out,
        json!([0, 0]),
        "logging out forgets the key and the queue"
    );
    b.type_into("#key", &key);
    b.click("#login");
    b.wait_rows(threats.len());
    b.click_row(&target);
    let li = b.wait_js(
        "the TP verdict after the restart",
        &format!(
            "const d = document.querySelector('#detail'); \
             const li = document.querySelectorAll('#verdicts li'); \
             return d.dataset.id === '{target}' && li.length === 1 && li[0].dataset.grade === 'TP' \
             && li[0].textContent"
        ),
    );
    let li = li.as_str().unwrap_or_default();
    assert!(
        li.contains(label) && li.contains("beaconing confirmed"),
        "{li}"
    );

    // a key revoked while the page is open: the next request sends the hunter to the login form
    revoke_key(&db, label);
    b.click("#refresh");
    let err = b.wait_js(
        "the login form after the key was revoked",
        "const e = document.querySelector('#error'); \
         return !document.querySelector('#login-form').hidden && !e.hidden && e.textContent",
    );
    assert!(err.as_str().unwrap_or_default().contains("401"), "{err}");
    assert_eq!(
        b.js("return [sessionStorage.length, document.querySelector('#detail').hidden]"),
        json!([0, true]),
        "a refused key is forgotten and the threat's data leaves the page"
    );

    drop(b);
    drop(chromedriver);
    drop(service);
    eprintln!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}
