//! Load run of the scoring service on loopback: `cargo bench --features service --bench
//! service_load`.
//!
//! Starts the release `threatrank serve` on a fresh database with one key per tenant, then a
//! bounded load from client threads with keep-alive connections (each thread owns its tenants, as
//! each pipeline pushes its own tenant's alerts):
//! 1. `POST /v1/alerts`: synthetic GUIDE-shaped rows (`threatrank::synth`, fitted to the shipped
//!    sample) in batches, every tenant's rows in order;
//! 2. `GET /v1/queue?top=50` for random tenants;
//! 3. both at once (pushes and reads interleaved).
//!
//! Reports throughput and p50/p90/p99/max latency per phase, and checks that nothing was lost:
//! rows accepted by the API = evidence rows stored in the database = rows sent. Sizes come from
//! the environment: `LOAD_ROWS` (default 40,000), `LOAD_TENANTS` (20), `LOAD_BATCH` (100 rows
//! per POST), `LOAD_CLIENTS` (4), `LOAD_QUEUE_REQUESTS` (4,000). Writes the figures as JSON to
//! `target/service-load.json`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use threatrank::service::client::Client;
use threatrank::synth::{generate, Profile, SynthParams};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Default, Clone)]
struct Phase {
    name: String,
    latencies: Vec<f64>,
    seconds: f64,
    rows: u64,
    failures: u64,
}

impl Phase {
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "phase": self.name,
            "requests": self.latencies.len(),
            "failures": self.failures,
            "seconds": self.seconds,
            "requests_per_second": self.latencies.len() as f64 / self.seconds,
            "rows_per_second": self.rows as f64 / self.seconds,
            "p50_ms": self.quantile(0.5) * 1e3,
            "p90_ms": self.quantile(0.9) * 1e3,
            "p99_ms": self.quantile(0.99) * 1e3,
            "max_ms": self.quantile(1.0) * 1e3,
        })
    }
    fn line(&self) -> String {
        format!(
            "{:<34} {:>8} {:>9.1} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>5}",
            self.name,
            self.latencies.len(),
            self.latencies.len() as f64 / self.seconds,
            self.rows as f64 / self.seconds,
            self.quantile(0.5) * 1e3,
            self.quantile(0.9) * 1e3,
            self.quantile(0.99) * 1e3,
            self.quantile(1.0) * 1e3,
            self.failures
        )
    }
}

/// Rows per tenant, each a CSV line (header separate), in file order.
fn synth_rows(rows: u64, tenants: u64) -> (String, BTreeMap<u64, Vec<String>>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let profile = Profile::fit_file(&root.join("datasets/guide/guide_sample.csv")).expect("fit");
    let params = SynthParams::default()
        .rows(rows)
        .tenants(tenants)
        .seed(7)
        .check()
        .expect("params");
    let mut buf = Vec::new();
    generate(&profile, &params, &mut buf).expect("generate");
    let text = String::from_utf8(buf).expect("utf-8");
    let mut lines = text.lines();
    let header = lines.next().expect("header").to_string();
    let org = header.split(',').position(|h| h == "OrgId").expect("OrgId");
    let mut by: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for l in lines {
        let t: u64 = l
            .split(',')
            .nth(org)
            .and_then(|v| v.parse().ok())
            .expect("OrgId");
        by.entry(t).or_default().push(l.to_string());
    }
    (header, by)
}

fn main() {
    let rows = env("LOAD_ROWS", 40_000);
    let tenants = env("LOAD_TENANTS", 20);
    let batch = env("LOAD_BATCH", 100) as usize;
    let clients = env("LOAD_CLIENTS", 4) as usize;
    let queue_requests = env("LOAD_QUEUE_REQUESTS", 4_000) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("load.db");
    let bin = env!("CARGO_BIN_EXE_threatrank");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json.gz");

    eprintln!("generating {rows} synthetic rows for {tenants} tenants");
    let (header, by_tenant) = synth_rows(rows, tenants);
    let mut keys: BTreeMap<u64, String> = BTreeMap::new();
    for &t in by_tenant.keys() {
        let o = Command::new(bin)
            .args(["keys", "add", "--db"])
            .arg(&db)
            .args([
                "--tenant",
                &t.to_string(),
                "--label",
                &format!("pipeline-{t}"),
            ])
            .output()
            .expect("keys add");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        keys.insert(t, String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .arg("--model")
        .arg(&model)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("listening line")
        .parse()
        .expect("address");

    // batches per tenant, tenants dealt round-robin to the client threads
    let tenants_list: Vec<u64> = by_tenant.keys().copied().collect();
    let mut work: Vec<Vec<(String, String, u64)>> = vec![Vec::new(); clients];
    for (i, t) in tenants_list.iter().enumerate() {
        for chunk in by_tenant[t].chunks(batch) {
            let mut body = String::with_capacity(header.len() + chunk.len() * 200);
            body.push_str(&header);
            body.push('\n');
            for l in chunk {
                body.push_str(l);
                body.push('\n');
            }
            work[i % clients].push((keys[t].clone(), body, chunk.len() as u64));
        }
    }
    let sent: u64 = by_tenant.values().map(|v| v.len() as u64).sum();
    let accepted = Arc::new(Mutex::new(0u64));

    let run_phase = |name: &str, jobs: Vec<Vec<Job>>| -> Phase {
        let start = Instant::now();
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|jobs| {
                let accepted = accepted.clone();
                std::thread::spawn(move || {
                    let mut c = Client::new(addr).with_timeout(Duration::from_secs(300));
                    let mut p = Phase::default();
                    for j in jobs {
                        let t0 = Instant::now();
                        let r = match &j {
                            Job::Post { key, body, .. } => {
                                c.post("/v1/alerts", Some(key), "text/csv", body.as_bytes())
                            }
                            Job::Queue { key } => c.get("/v1/queue?top=50", Some(key)),
                        };
                        p.latencies.push(t0.elapsed().as_secs_f64());
                        match r {
                            Ok(r) if r.status == 200 => {
                                if let Job::Post { rows, .. } = j {
                                    let a = r.json()["accepted"].as_u64().unwrap_or(0);
                                    if a != rows {
                                        p.failures += 1;
                                    }
                                    *accepted.lock().unwrap() += a;
                                    p.rows += rows;
                                }
                            }
                            _ => p.failures += 1,
                        }
                    }
                    p
                })
            })
            .collect();
        let mut all = Phase {
            name: name.to_string(),
            ..Phase::default()
        };
        for h in handles {
            let p = h.join().expect("client thread");
            all.latencies.extend(p.latencies);
            all.rows += p.rows;
            all.failures += p.failures;
        }
        all.seconds = start.elapsed().as_secs_f64();
        all
    };

    // phase 1: pushes; hold back the last quarter of each thread's batches for phase 3
    let mut held: Vec<Vec<Job>> = Vec::new();
    let mut push: Vec<Vec<Job>> = Vec::new();
    for w in &work {
        let cut = w.len() * 3 / 4;
        let to_job = |(key, body, rows): &(String, String, u64)| Job::Post {
            key: key.clone(),
            body: body.clone(),
            rows: *rows,
        };
        push.push(w[..cut].iter().map(to_job).collect());
        held.push(w[cut..].iter().map(to_job).collect());
    }
    eprintln!("phase 1: POST /v1/alerts");
    let p1 = run_phase(&format!("POST /v1/alerts ({batch} rows/batch)"), push);
    // phase 2: queue reads, tenants drawn by a fixed stride
    let queue_jobs = |n: usize, offset: usize| -> Vec<Vec<Job>> {
        (0..clients)
            .map(|c| {
                (0..n / clients)
                    .map(|i| Job::Queue {
                        key: keys[&tenants_list[(offset + c * 7 + i * 13) % tenants_list.len()]]
                            .clone(),
                    })
                    .collect()
            })
            .collect()
    };
    eprintln!("phase 2: GET /v1/queue");
    let p2 = run_phase("GET /v1/queue?top=50", queue_jobs(queue_requests, 0));
    // phase 3: mixed — half the threads push the held-back batches, half read queues
    eprintln!("phase 3: mixed");
    let mut mixed: Vec<Vec<Job>> = held;
    let reads = queue_jobs(queue_requests / 2, 3);
    for (m, r) in mixed.iter_mut().zip(reads) {
        m.extend(r);
    }
    let p3 = run_phase("mixed POST + GET", mixed);

    // nothing lost
    let stored = threatrank::service::Db::open(&db, 1)
        .expect("db")
        .evidence_count(None)
        .expect("count");
    let accepted = *accepted.lock().unwrap();
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "service load on 127.0.0.1: {rows} synthetic rows, {} tenants, {clients} client threads, machine: {} cores",
        tenants_list.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<34} {:>8} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "phase", "requests", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "fail"
    );
    for p in [&p1, &p2, &p3] {
        println!("{}", p.line());
    }
    println!("rows sent {sent}, accepted by the API {accepted}, stored in the database {stored}");
    let report = serde_json::json!({
        "rows": rows,
        "tenants": tenants_list.len(),
        "batch_rows": batch,
        "clients": clients,
        "phases": [p1.json(), p2.json(), p3.json()],
        "rows_sent": sent,
        "rows_accepted": accepted,
        "rows_stored": stored,
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/service-load.json");
    let _ = std::fs::create_dir_all(out.parent().expect("parent"));
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .expect("write report");
    assert_eq!(accepted, sent, "alerts accepted != alerts sent");
    assert_eq!(stored, accepted, "alerts accepted != alerts stored");
    assert_eq!(
        p1.failures + p2.failures + p3.failures,
        0,
        "failed requests"
    );
}

#[derive(Debug, Clone)]
enum Job {
    Post {
        key: String,
        body: String,
        rows: u64,
    },
    Queue {
        key: String,
    },
}
