//! `threatrank stream` against librdkafka's in-process mock cluster (`MockCluster`, loopback
//! TCP): native alerts made from the shipped GUIDE sample are produced to a topic, the stream
//! runs in-process (and once as the binary), and the output topic is read back.
//!
//! What is checked: every input message is accounted for (`messages = accepted + rejected`,
//! every alert in some scored threat), the latest message of each threat equals what the
//! library (`pipeline::score_loaded_explaining` on all the alerts at once) gives, a restart
//! after a graceful stop resumes exactly where the stop committed (no duplicate, no loss), a
//! restart after a failed commit replays the uncommitted batch (duplicates, counted; no loss),
//! a consumer joining mid-stream loses nothing (a message is scored twice only when its
//! partition moved before its deferred commit), a batch slower than the idle limit does not end
//! the run, malformed messages end up in the rejects topic with their reason, partition and
//! offset, and the binary stops on SIGTERM after committing.

use crate::common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use threatrank::ingest::{self, IngestParams, InputFormat};
use threatrank::kafka::{self, Event, Model, RejectedOut, Stop, StreamKafkaParams, ThreatOut};
use threatrank::pipeline::{self, Loaded};
use threatrank::rank::ScoredIncident;

/// The shipped default model, loaded once per process.
fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json.gz");
        Model::load(&path, kn()).expect("default model")
    })
}

/// GUIDE entity type → the column whose code a native entity of that type carries (the
/// native reader's mapping, `ingest::native`).
fn entity_column(entity_type: &str) -> Option<&'static str> {
    Some(match entity_type {
        "Machine" => "DeviceId",
        "File" => "Sha256",
        "Ip" => "IpAddress",
        "Url" => "Url",
        "User" | "Account" => "AccountObjectId",
        "Mailbox" => "AccountUpn",
        "MailMessage" => "NetworkMessageId",
        "MailCluster" => "EmailClusterId",
        "RegistryKey" => "RegistryKey",
        "RegistryValue" => "RegistryValueData",
        "CloudApplication" | "OAuthApplication" => "ApplicationId",
        "Process" => "FileName",
        "AzureResource" => "ResourceIdName",
        _ => return None,
    })
}

/// Native alerts from the first `rows` rows of the shipped sample: one per `(tenant,
/// incident, alert)`, entities from its evidence rows; incidents whose id is divisible by
/// `loose_every` lose their incident id (correlated by the model's linker). An alert id seen
/// twice in a tenant is kept once (the stream takes a resent alert as the same alert).
fn sample_alerts(rows: usize, loose_every: u64) -> Vec<Value> {
    let names = header_names();
    let at = |r: &[String], c: &str| r[names.iter().position(|h| h == c).unwrap()].clone();
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut groups: BTreeMap<(String, String, String), Vec<Vec<String>>> = BTreeMap::new();
    for r in crate::common::rows(rows) {
        let k = (at(&r, "OrgId"), at(&r, "IncidentId"), at(&r, "AlertId"));
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(r);
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for k in order {
        if !seen.insert((k.0.clone(), k.2.clone())) {
            continue;
        }
        let rs = &groups[&k];
        let r0 = &rs[0];
        let incident: u64 = k.1.parse().unwrap();
        let techniques: Vec<String> = at(r0, "MitreTechniques")
            .split(';')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        let entities: Vec<Value> = rs
            .iter()
            .map(|r| {
                let ty = at(r, "EntityType");
                let value = entity_column(&ty)
                    .and_then(|c| at(r, c).parse::<u64>().ok())
                    .map_or(Value::Null, Value::from);
                json!({"type": ty, "role": at(r, "EvidenceRole"), "value": value})
            })
            .collect();
        let mut a = json!({
            "tenant": k.0.parse::<u64>().unwrap(),
            "alert_id": k.2.parse::<u64>().unwrap(),
            "timestamp": at(r0, "Timestamp"),
            "detector": at(r0, "DetectorId"),
            "title": at(r0, "AlertTitle"),
            "category": at(r0, "Category"),
            "techniques": techniques,
            "entities": entities,
            "grade": at(r0, "IncidentGrade"),
        });
        if !incident.is_multiple_of(loose_every) {
            a["incident_id"] = json!(incident);
        }
        out.push(a);
    }
    out
}

/// A mock cluster with the input topic (3 partitions), the output topic (2) and the rejects
/// topic (1).
fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic("alerts", 3, 1).unwrap();
    c.create_topic("scored", 2, 1).unwrap();
    c.create_topic("rejects", 1, 1).unwrap();
    c
}

/// Produces `(key, value)` messages in order; returns where each landed.
fn produce(
    bootstrap: &str,
    topic: &str,
    msgs: &[(Option<String>, Option<String>)],
) -> Vec<(i32, i64)> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let futures: Vec<_> = msgs
        .iter()
        .map(|(k, v)| {
            let mut r = FutureRecord::<str, str>::to(topic);
            if let Some(k) = k {
                r = r.key(k.as_str());
            }
            if let Some(v) = v {
                r = r.payload(v.as_str());
            }
            p.send_result(r).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    rt.block_on(async {
        let mut at = Vec::new();
        for f in futures {
            let d = f.await.unwrap().map_err(|(e, _)| e).unwrap();
            at.push((d.partition, d.offset));
        }
        at
    })
}

/// Alerts as messages keyed by tenant.
fn alert_messages(alerts: &[Value]) -> Vec<(Option<String>, Option<String>)> {
    alerts
        .iter()
        .map(|a| (Some(a["tenant"].to_string()), Some(a.to_string())))
        .collect()
}

/// One message read back.
#[derive(Debug, Clone)]
struct Read {
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: Value,
}

/// Every message of a topic, partition by partition in offset order (read up to the high
/// watermarks, so everything produced before the call).
fn read_topic(bootstrap: &str, topic: &str) -> Vec<Read> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let n = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut high = BTreeMap::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        let (_, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        high.insert(p, hi);
    }
    c.assign(&tpl).unwrap();
    let mut next: BTreeMap<i32, i64> = high.keys().map(|&p| (p, 0)).collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().any(|(p, o)| *o < high[p]) {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: {next:?} of {high:?}"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            next.insert(m.partition(), m.offset() + 1);
            out.push(Read {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: serde_json::from_slice(m.payload().unwrap()).unwrap(),
            });
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// A stream run in-process; `on_batch` sees the totals after each committed batch.
fn run_stream(
    params: &StreamKafkaParams,
    stop: &Stop,
    on_batch: &mut dyn FnMut(&kafka::StreamKafkaOutcome),
) -> Result<kafka::StreamKafkaOutcome, kafka::KafkaError> {
    let valid = params.check().unwrap();
    kafka::run(model(), kn(), &valid, stop, &mut |e| {
        if let Event::Batch { totals, .. } = e {
            on_batch(totals)
        }
    })
}

/// The mock coordinator waits `session.timeout.ms` − 1 s before it hands the partitions of a
/// member that left (even by LeaveGroup) to a new one: 44 s at librdkafka's default, hence
/// 5 s here (a broker hands them over at once).
const SESSION_TIMEOUT_MS: &str = "6000";

fn params(bootstrap: &str, group: &str) -> StreamKafkaParams {
    StreamKafkaParams::new(bootstrap, "alerts", "scored")
        .group(group)
        .max_batch(250)
        .max_wait_ms(200)
        .exit_when_idle_ms(Some(1500))
        .config("session.timeout.ms", SESSION_TIMEOUT_MS)
        .config("heartbeat.interval.ms", "1000")
}

/// The threats of the output, in order, each tenant's in its partition.
fn threats(out: &[Read]) -> Vec<ThreatOut> {
    out.iter()
        .filter(|r| r.value["type"] == "threat")
        .map(|r| {
            let t: ThreatOut = serde_json::from_value(r.value.clone()).unwrap();
            assert_eq!(
                r.key.as_deref(),
                Some(t.tenant.to_string().as_str()),
                "key = tenant"
            );
            t
        })
        .collect()
}

/// The live threats: the latest message of each `(tenant, id)`, less those superseded after it.
fn live(threats: &[ThreatOut]) -> BTreeMap<(u64, String), ThreatOut> {
    let mut m = BTreeMap::new();
    for t in threats {
        for s in &t.supersedes {
            m.remove(&(t.tenant, s.clone()));
        }
        m.insert((t.tenant, t.id.clone()), t.clone());
    }
    m
}

/// `(tenant, alert)` of every alert some threat holds.
fn alerts_out(threats: &[ThreatOut]) -> BTreeSet<(u64, u64)> {
    threats
        .iter()
        .flat_map(|t| t.alerts.iter().map(move |a| (t.tenant, *a)))
        .collect()
}

fn alerts_in(alerts: &[Value]) -> BTreeSet<(u64, u64)> {
    alerts
        .iter()
        .map(|a| {
            (
                a["tenant"].as_u64().unwrap(),
                a["alert_id"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// What the library gives on all the alerts at once (as `threatrank score` on a `.jsonl`).
fn library(alerts: &[Value]) -> BTreeMap<(u64, String), (ScoredIncident, Vec<u64>)> {
    let text: String = alerts.iter().map(|a| a.to_string() + "\n").collect();
    let p = IngestParams::default().read_labels(false).check().unwrap();
    let ing =
        ingest::read_from(text.as_bytes(), "all.jsonl", InputFormat::NativeJsonl, &p).unwrap();
    assert!(ing.report.rejected.is_empty());
    let none = |_: &[ScoredIncident]| Vec::new();
    let scored = pipeline::score_loaded_explaining(
        &model().artifact,
        Loaded::in_memory(ing.evidence),
        0,
        kn(),
        Some(&none),
    )
    .unwrap();
    scored
        .incidents
        .into_iter()
        .zip(&scored.loaded.corr.incidents)
        .map(|(s, inc)| {
            let alerts = inc.alerts.iter().map(|a| a.0).collect();
            ((s.key.tenant.0, s.key.incident.0.to_string()), (s, alerts))
        })
        .collect()
}

#[test]
fn every_alert_is_scored_as_the_library_scores_it() {
    let c = cluster();
    let b = c.bootstrap_servers();
    let alerts = sample_alerts(10_000, 3);
    let loose = alerts
        .iter()
        .filter(|a| a.get("incident_id").is_none())
        .count();
    assert!(loose > 1000, "{loose} alerts without incident id");
    produce(&b, "alerts", &alert_messages(&alerts));

    // assigned → last batch committed: the scoring time, without the group join and idle wait
    let mut assigned: Option<Instant> = None;
    let mut last = Instant::now();
    let valid = params(&b, "g-main").max_batch(500).check().unwrap();
    let out = kafka::run(model(), kn(), &valid, &Stop::new(), &mut |e| match e {
        Event::Assigned(_) => assigned = Some(Instant::now()),
        Event::Batch { .. } => last = Instant::now(),
        _ => {}
    })
    .unwrap();
    let n = alerts.len() as u64;
    assert_eq!(
        (out.messages, out.accepted, out.rejected, out.released),
        (n, n, 0, 0)
    );
    assert!(out.batches >= n / 500, "{out:?}");
    let seconds = (last - assigned.unwrap()).as_secs_f64();
    eprintln!(
        "kafka stream through the mock cluster: {n} messages scored, produced and committed in \
         {seconds:.2} s after the assignment ({:.0} messages/s, {} build); {}",
        n as f64 / seconds,
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
        out.summary()
    );

    let got = read_topic(&b, "scored");
    let ts = threats(&got);
    assert_eq!(ts.len() as u64, out.threats);
    assert_eq!(ts.len(), got.len(), "no rejects");
    assert_eq!(
        alerts_out(&ts),
        alerts_in(&alerts),
        "every alert in some threat"
    );

    let want = library(&alerts);
    let have = live(&ts);
    assert_eq!(
        have.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same threats"
    );
    assert!(have.values().any(|t| t.correlated && t.alerts.len() > 1));
    for (k, t) in &have {
        let (s, alerts) = &want[k];
        assert_eq!(&t.alerts, alerts, "{k:?}");
        assert_eq!(
            (
                t.grade.as_str(),
                t.priority,
                t.grade_set.clone(),
                t.uncertain
            ),
            (
                s.predicted.name(),
                s.priority,
                s.grade_set.to_string(),
                s.is_uncertain()
            ),
            "{k:?}"
        );
        for (a, b) in [t.p_tp, t.p_bp, t.p_fp].iter().zip(s.probs) {
            assert!((a - b).abs() <= 1e-6, "{k:?}: {a} vs {b}");
        }
        assert_eq!((t.n_alerts, t.n_evidence), (s.n_alerts, s.n_evidence));
        assert_eq!(t.model, model().id);
    }
}

/// Alerts produced, a stream stopped after `stop_after` committed batches (gracefully, or by
/// a failed commit), then a second consumer of the same group run to the end.
struct Restart {
    alerts: Vec<Value>,
    first: Result<kafka::StreamKafkaOutcome, kafka::KafkaError>,
    /// totals at the first run's last committed batch
    committed: kafka::StreamKafkaOutcome,
    second: kafka::StreamKafkaOutcome,
    threats: Vec<ThreatOut>,
}

fn restart(group: &str, stop_after: u64, crash: bool) -> Restart {
    let c = cluster();
    let b = c.bootstrap_servers();
    let alerts = sample_alerts(2500, 3);
    produce(&b, "alerts", &alert_messages(&alerts));
    let p = params(&b, group)
        .max_batch(200)
        .exit_when_idle_ms(Some(20_000));
    let stop = Stop::new();
    let mut committed = kafka::StreamKafkaOutcome::default();
    let first = run_stream(&p, &stop, &mut |t| {
        committed = t.clone();
        if t.batches == stop_after {
            if crash {
                // the next batch is produced, then its commit fails
                let e = RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE;
                c.request_errors(RDKafkaApiKey::OffsetCommit, &[e; 8]);
            } else {
                stop.stop();
            }
        }
    });
    c.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    let second = run_stream(&params(&b, group), &Stop::new(), &mut |_| {}).unwrap();
    let threats = threats(&read_topic(&b, "scored"));
    Restart {
        alerts,
        first,
        committed,
        second,
        threats,
    }
}

#[test]
fn a_graceful_stop_commits_and_a_restart_resumes_there() {
    let r = restart("g-stop", 3, false);
    let first = r.first.unwrap();
    let n = r.alerts.len() as u64;
    let counts = |o: &kafka::StreamKafkaOutcome| (o.messages, o.accepted, o.threats, o.batches);
    assert_eq!(
        counts(&first),
        counts(&r.committed),
        "a stop returns what it committed"
    );
    assert_eq!(first.batches, 3);
    assert!(first.messages > 0 && first.messages < n, "{first:?}");
    // nothing read twice, nothing lost
    assert_eq!(first.messages + r.second.messages, n);
    assert_eq!((first.rejected, r.second.rejected), (0, 0));
    assert_eq!(r.threats.len() as u64, first.threats + r.second.threats);
    assert_eq!(alerts_out(&r.threats), alerts_in(&r.alerts));
}

#[test]
fn a_failed_commit_replays_the_batch_on_restart_and_loses_nothing() {
    let r = restart("g-crash", 2, true);
    let n = r.alerts.len() as u64;
    match &r.first {
        Err(kafka::KafkaError::Commit { offsets, .. }) => assert!(offsets.contains("alerts/")),
        other => panic!("expected a commit error, got {other:?}"),
    }
    assert_eq!(r.committed.batches, 2);
    // the second consumer starts at the last committed offsets
    assert_eq!(r.committed.messages + r.second.messages, n);
    // the uncommitted batch's threats were produced twice
    let duplicates = r.threats.len() as u64 - (r.committed.threats + r.second.threats);
    assert!(
        duplicates > 0,
        "the failed batch's threats went out before the commit failed"
    );
    eprintln!(
        "failed commit: {duplicates} threat messages produced twice ({} messages replayed)",
        r.committed.messages + r.second.messages - r.committed.messages
    );
    assert_eq!(alerts_out(&r.threats), alerts_in(&r.alerts), "no loss");
}

#[test]
fn malformed_messages_go_to_the_rejects_topic_with_reason_and_offset() {
    let c = cluster();
    let b = c.bootstrap_servers();
    let alerts = sample_alerts(400, 3);
    let mut msgs = alert_messages(&alerts);
    let bad: Vec<(Option<String>, Option<String>, &str)> = vec![
        (Some("x".into()), Some("{not json".into()), "invalid JSON"),
        (
            None,
            Some(r#"{"tenant": 1, "alert_id": 2}"#.into()),
            "missing required field",
        ),
        (Some("t".into()), None, "tombstone"),
        (
            None,
            Some(
                alerts[0]
                    .to_string()
                    .replacen("\"tenant\"", "\"tennant\"", 1),
            ),
            "unknown field",
        ),
        (None, Some("   ".into()), "empty message value"),
    ];
    // spread the bad ones through the input
    for (i, (k, v, _)) in bad.iter().enumerate() {
        msgs.insert(37 + i * 71, (k.clone(), v.clone()));
    }
    let at = produce(&b, "alerts", &msgs);
    let out = run_stream(
        &params(&b, "g-rejects").rejects_topic(Some("rejects".into())),
        &Stop::new(),
        &mut |_| {},
    )
    .unwrap();
    let n = msgs.len() as u64;
    assert_eq!(out.messages, n);
    assert_eq!(out.messages, out.accepted + out.rejected);
    assert_eq!(
        (out.accepted, out.rejected),
        (alerts.len() as u64, bad.len() as u64)
    );

    let rejects = read_topic(&b, "rejects");
    assert_eq!(rejects.len(), bad.len());
    let by_offset: BTreeMap<(i32, i64), RejectedOut> = rejects
        .iter()
        .map(|r| {
            let v: RejectedOut = serde_json::from_value(r.value.clone()).unwrap();
            ((v.partition, v.offset), v)
        })
        .collect();
    for (i, (key, value, why)) in bad.iter().enumerate() {
        let (p, o) = at[37 + i * 71];
        let r = by_offset
            .get(&(p, o))
            .unwrap_or_else(|| panic!("reject of {why} at {p}/{o} missing: {by_offset:#?}"));
        assert_eq!((r.kind.as_str(), r.topic.as_str()), ("rejected", "alerts"));
        assert!(r.reason.contains(why), "{why}: {r:?}");
        let head = value.as_deref().unwrap_or_default();
        assert_eq!(r.value, head[..head.len().min(kafka::REJECT_VALUE_BYTES)]);
        let source_key = rejects
            .iter()
            .find(|m| m.value["offset"] == o && m.value["partition"] == p)
            .and_then(|m| m.key.clone());
        assert_eq!(&source_key, key, "the source key is kept");
    }
    assert_eq!(
        by_offset
            .values()
            .find(|r| r.reason.contains("unknown field"))
            .unwrap()
            .field
            .as_deref(),
        Some("tennant")
    );
    // the output topic holds only threats, every good alert in one
    let ts = threats(&read_topic(&b, "scored"));
    assert_eq!(ts.len() as u64, out.threats);
    assert_eq!(alerts_out(&ts), alerts_in(&alerts));
}

#[test]
fn the_binary_streams_until_sigterm_then_commits_and_exits_0() {
    use std::io::BufRead;
    let c = cluster();
    let b = c.bootstrap_servers();
    let alerts = sample_alerts(600, 3);
    produce(&b, "alerts", &alert_messages(&alerts));
    let model_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json.gz");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_threatrank"))
        .args([
            "stream",
            "--brokers",
            &b,
            "--topic",
            "alerts",
            "--output-topic",
            "scored",
        ])
        .args([
            "--group",
            "g-cli",
            "--max-batch",
            "100",
            "--max-wait-ms",
            "100",
        ])
        .args([
            "--kafka-config",
            &format!("session.timeout.ms={SESSION_TIMEOUT_MS}"),
            "--kafka-config",
            "heartbeat.interval.ms=1000",
        ])
        .arg("--model")
        .arg(&model_path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // wait until the whole topic is scored (the output topic's threats hold every alert)
    while Instant::now() < deadline {
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        let done = lines.iter().any(|l| l.starts_with("assigned"))
            && alerts_out(&threats(&read_topic(&b, "scored"))) == alerts_in(&alerts);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    // the reader thread ends with the process
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(l);
    }
    let text = lines.join("\n");
    assert!(status.success(), "{status:?}\n{text}");
    let n = alerts.len();
    let want = format!("{n} messages in = {n} accepted + 0 rejected");
    assert!(
        text.lines().last().unwrap_or("").starts_with(&want),
        "{text}"
    );
    assert!(
        text.contains("assigned: alerts/0, alerts/1, alerts/2"),
        "{text}"
    );
    // a consumer of the same group finds nothing left: the stop committed everything
    let again = run_stream(&params(&b, "g-cli"), &Stop::new(), &mut |_| {}).unwrap();
    assert_eq!(again.messages, 0, "{again:?}");
}

#[test]
fn the_binary_refuses_bad_parameters_before_connecting() {
    let out = run(&[
        "stream",
        "--brokers",
        "nowhere",
        "--topic",
        "a",
        "--output-topic",
        "b",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid stream parameter `brokers`"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "stream",
        "--brokers",
        "127.0.0.1:9",
        "--topic",
        "a",
        "--output-topic",
        "a",
    ]);
    assert!(stderr(&out).contains("`output_topic`"), "{}", stderr(&out));
    let out = run(&[
        "stream",
        "--brokers",
        "127.0.0.1:9",
        "--topic",
        "a",
        "--output-topic",
        "b",
        "--model",
        "/nonexistent/model.json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn a_batch_slower_than_the_idle_limit_does_not_end_the_run() {
    let c = cluster();
    let b = c.bootstrap_servers();
    let alerts = sample_alerts(160, 3);
    produce(&b, "alerts", &alert_messages(&alerts));
    // exact reasons for every threat of 50 alerts: a batch takes several times the idle limit
    let idle_ms = 300;
    let p = params(&b, "g-idle")
        .max_batch(50)
        .reasons(2)
        .exit_when_idle_ms(Some(idle_ms));
    let idle = idle_ms as f64 / 1000.0;
    // the number of the first batch the run itself timed above the limit
    let mut first_slow = None;
    let out = run_stream(&p, &Stop::new(), &mut |t| {
        if t.slowest_batch_seconds > idle {
            first_slow.get_or_insert(t.batches);
        }
    })
    .unwrap();
    eprintln!("{}", out.summary());
    let first_slow = first_slow.unwrap_or_else(|| {
        panic!("no batch took longer than the {idle_ms} ms idle limit, nothing tested: {out:?}")
    });
    // the run went on after it, to the last message
    assert!(
        first_slow < out.batches,
        "batch {first_slow} was slower than the idle limit and the run ended there: {out:?}"
    );
    assert_eq!(out.messages, alerts.len() as u64, "{out:?}");
    let ts = threats(&read_topic(&b, "scored"));
    assert!(ts
        .iter()
        .all(|t| !t.reasons.is_empty() && t.reasons.len() <= 2));
    assert_eq!(alerts_out(&ts), alerts_in(&alerts));
}

#[test]
fn a_second_consumer_joining_takes_partitions_without_loss() {
    let c = cluster();
    let b = c.bootstrap_servers();
    let alerts = sample_alerts(220, 3);
    produce(&b, "alerts", &alert_messages(&alerts));
    // small batches explained one by one: the first consumer is still busy when the second joins
    let p = params(&b, "g-two")
        .max_batch(10)
        .reasons(1)
        .exit_when_idle_ms(Some(3000));
    let (first_batches, rx) = std::sync::mpsc::channel::<()>();
    let pa = p.clone();
    let a = std::thread::spawn(move || {
        let mut revoked = 0;
        let valid = pa.check().unwrap();
        let out = kafka::run(model(), kn(), &valid, &Stop::new(), &mut |e| match e {
            Event::Batch { totals, .. } if totals.batches == 3 => first_batches.send(()).unwrap(),
            Event::Revoked { .. } => revoked += 1,
            _ => {}
        })
        .unwrap();
        (out, revoked)
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let second = run_stream(&p, &Stop::new(), &mut |_| {}).unwrap();
    let (first, revoked) = a.join().unwrap();
    eprintln!("first: {}\nsecond: {}", first.summary(), second.summary());
    assert!(
        revoked > 0,
        "the join revoked the first consumer's partitions"
    );
    for o in [&first, &second] {
        assert_eq!(o.messages, o.accepted + o.rejected + o.released, "{o:?}");
    }
    // at least once: a batch whose commit the rebalance deferred, and whose partition then
    // moved, is scored again by the new owner (counted)
    let n = alerts.len() as u64;
    let scored = first.accepted + second.accepted;
    assert!(scored >= n, "{scored} < {n}: lost messages");
    let duplicates = scored - n;
    if duplicates > 0 {
        // only a partition that moved before its deferred commit went through is read twice
        assert!(first.uncommitted_partitions > 0, "{first:?}");
    }
    eprintln!("{duplicates} messages scored twice across the rebalance");
    let ts = threats(&read_topic(&b, "scored"));
    assert_eq!(ts.len() as u64, first.threats + second.threats);
    assert_eq!(alerts_out(&ts), alerts_in(&alerts));
}
