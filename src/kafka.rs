//! Kafka micro-batch scoring (`threatrank stream`, cargo feature `kafka`; contract:
//! `docs/STREAM.md`).
//!
//! Where it sits: a source and a sink around the same `pipeline` code the CLI and the service
//! use. Messages of the input topic (one native JSONL alert per message value, read by the
//! `ingest` native reader exactly as a `.jsonl` file line) are gathered into micro-batches (up
//! to `max_batch` messages or `max_wait_ms` after the first one), grouped into candidate
//! threats (given incident ids; alerts without one correlated per tenant with the artifact's
//! `Linker`), scored by [`pipeline::score_loaded_explaining`], and one JSON message per scored
//! threat is produced to the output topic, keyed by tenant id (a tenant's results stay in one
//! partition, in order). A rejected message is never dropped: it is produced to the rejects
//! topic (default: the output topic) as `"type": "rejected"` with its reason and its source
//! topic, partition and offset.
//!
//! **At-least-once.** Offsets are committed by hand (`enable.auto.commit=false`), once per batch,
//! only after every result of that batch was acknowledged by the brokers (idempotent producer,
//! `acks=all`). A crash between producing and committing replays the batch on restart: its
//! threats are produced again (duplicates; consumers keep the latest message per `(tenant,
//! id)`), nothing is lost. A graceful stop ([`Stop`], SIGINT/SIGTERM via
//! [`stop_on_signals`]) finishes the batch, commits and returns. A commit refused because the
//! group is rebalancing is retried once it is stable (see [`run`]).
//!
//! **Cross-batch state** ([`BatchScorer`]): the alerts of recently touched threats are held in
//! memory, at most `state_alerts` alerts (least recently touched threats evicted first), so an
//! incident whose alerts span batches is re-emitted with all its alerts seen so far, and a loose
//! alert can join a candidate threat formed in an earlier batch (ids merged away are named in
//! `supersedes`). The state is not persisted: after a restart, or on the consumer that takes a
//! partition over in a rebalance, an incident's earlier alerts are unknown and it is scored on
//! the alerts that arrive from then on. With `state_alerts = 0` each batch is scored on its
//! own.

use crate::correlate::{group_incidents, Linker};
use crate::domain::{Evidence, IncidentId, IncidentKey, TenantId};
use crate::ingest::{self, format_rfc3339, IngestParams, IngestValidParams, InputFormat};
use crate::pipeline::{self, Loaded, PipelineError};
use crate::rank::{Actor, Reason, ScoredIncident};
use crate::signals::Knowledge;
use crate::train::{Artifact, ArtifactError};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Errors of `threatrank stream`.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// a parameter out of range
    #[error("invalid stream parameter `{name}`: {reason}")]
    Param {
        /// parameter
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// the model artifact
    #[error(transparent)]
    Model(#[from] ArtifactError),
    /// the model was built under another pseudonymization key
    #[error("{model}: {source}")]
    Key {
        /// artifact path
        model: String,
        /// why
        #[source]
        source: crate::signals::GlobalSignalsError,
    },
    /// creating or subscribing a Kafka client
    #[error("kafka {what}: {source}")]
    Client {
        /// what failed
        what: String,
        /// cause
        #[source]
        source: RdError,
    },
    /// scoring a batch (nothing of the batch was produced or committed)
    #[error("scoring a batch: {0}")]
    Score(#[source] Box<PipelineError>),
    /// a result was not acknowledged by the brokers: the batch's offsets were not committed,
    /// a restart replays it
    #[error("producing to {topic}: {source} (batch not committed; a restart replays it)")]
    Delivery {
        /// target topic
        topic: String,
        /// cause (`Canceled` when the producer dropped the message)
        #[source]
        source: RdError,
    },
    /// a result could not be encoded as JSON (nothing of the batch was produced or committed):
    /// never an empty message
    #[error("encoding a {what} message: {source}")]
    Encode {
        /// which message
        what: &'static str,
        /// cause
        #[source]
        source: serde_json::Error,
    },
    /// the batch's results were produced and acknowledged but its offsets could not be
    /// committed: a restart replays it and its threats are produced twice
    #[error("committing offsets {offsets}: {source} (results already produced: a restart produces them again)")]
    Commit {
        /// `topic/partition@offset` list
        offsets: String,
        /// cause
        #[source]
        source: RdError,
    },
    /// the runtime or a signal handler
    #[error("{what}: {source}")]
    Io {
        /// what failed
        what: String,
        /// cause
        #[source]
        source: std::io::Error,
    },
}

impl From<PipelineError> for KafkaError {
    fn from(e: PipelineError) -> Self {
        KafkaError::Score(Box::new(e))
    }
}

/// librdkafka properties `threatrank stream` sets itself; `config` may not override them.
pub const RESERVED_CONFIG: [&str; 6] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "acks",
];

/// `threatrank stream` parameters (unchecked; see [`StreamKafkaParams::check`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamKafkaParams {
    /// bootstrap brokers, `HOST:PORT[,HOST:PORT…]` (no default)
    pub brokers: String,
    /// input topic of native JSONL alerts, one per message (no default)
    pub topic: String,
    /// topic of the scored threats (no default); never the input topic
    pub output_topic: String,
    /// topic of the rejected messages (default `None`: the output topic, `"type": "rejected"`)
    pub rejects_topic: Option<String>,
    /// consumer group (default `threatrank`): the committed offsets belong to it
    pub group: String,
    /// model artifact (default `models/default.json.gz`)
    pub model: PathBuf,
    /// most messages in one micro-batch (default 500)
    pub max_batch: usize,
    /// longest wait after a batch's first message before it is scored, ms (default 1,000)
    pub max_wait_ms: u64,
    /// exit once no message arrived for this long while holding partitions, ms (default
    /// `None`: run until stopped)
    pub exit_when_idle_ms: Option<u64>,
    /// most alerts held across batches (default 100,000; 0: each batch scored on its own)
    pub state_alerts: usize,
    /// reasons per threat (default 0: none; exact TreeSHAP for every threat produced, which
    /// costs more than scoring it)
    pub reasons: usize,
    /// extra librdkafka properties for both clients (security, timeouts), except
    /// [`RESERVED_CONFIG`] (default none)
    pub config: Vec<(String, String)>,
}

impl Default for StreamKafkaParams {
    fn default() -> Self {
        StreamKafkaParams {
            brokers: String::new(),
            topic: String::new(),
            output_topic: String::new(),
            rejects_topic: None,
            group: "threatrank".into(),
            model: PathBuf::from("models/default.json.gz"),
            max_batch: 500,
            max_wait_ms: 1000,
            exit_when_idle_ms: None,
            state_alerts: 100_000,
            reasons: 0,
            config: Vec::new(),
        }
    }
}

impl StreamKafkaParams {
    /// Defaults with the three settings that have none.
    pub fn new(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        output_topic: impl Into<String>,
    ) -> Self {
        StreamKafkaParams {
            brokers: brokers.into(),
            topic: topic.into(),
            output_topic: output_topic.into(),
            ..Default::default()
        }
    }
    /// Sets [`StreamKafkaParams::rejects_topic`] (default: the output topic).
    pub fn rejects_topic(mut self, t: Option<String>) -> Self {
        self.rejects_topic = t;
        self
    }
    /// Sets [`StreamKafkaParams::group`] (default `threatrank`).
    pub fn group(mut self, g: impl Into<String>) -> Self {
        self.group = g.into();
        self
    }
    /// Sets [`StreamKafkaParams::model`] (default `models/default.json.gz`).
    pub fn model(mut self, p: impl Into<PathBuf>) -> Self {
        self.model = p.into();
        self
    }
    /// Sets [`StreamKafkaParams::max_batch`] (default 500).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }
    /// Sets [`StreamKafkaParams::max_wait_ms`] (default 1,000).
    pub fn max_wait_ms(mut self, ms: u64) -> Self {
        self.max_wait_ms = ms;
        self
    }
    /// Sets [`StreamKafkaParams::exit_when_idle_ms`] (default `None`).
    pub fn exit_when_idle_ms(mut self, ms: Option<u64>) -> Self {
        self.exit_when_idle_ms = ms;
        self
    }
    /// Sets [`StreamKafkaParams::state_alerts`] (default 100,000).
    pub fn state_alerts(mut self, n: usize) -> Self {
        self.state_alerts = n;
        self
    }
    /// Sets [`StreamKafkaParams::reasons`] (default 0).
    pub fn reasons(mut self, n: usize) -> Self {
        self.reasons = n;
        self
    }
    /// Adds a librdkafka property (see [`StreamKafkaParams::config`]).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// Checks every parameter.
    ///
    /// ```
    /// use threatrank::kafka::StreamKafkaParams;
    /// assert!(StreamKafkaParams::new("localhost:9092", "alerts", "scored").check().is_ok());
    /// // scoring its own output would loop forever
    /// assert!(StreamKafkaParams::new("localhost:9092", "alerts", "alerts").check().is_err());
    /// ```
    pub fn check(&self) -> Result<StreamKafkaValidParams, KafkaError> {
        let bad = |name, reason: String| Err(KafkaError::Param { name, reason });
        if self.brokers.trim().is_empty() {
            return bad("brokers", "empty (expected HOST:PORT[,HOST:PORT…])".into());
        }
        for b in self.brokers.split(',') {
            let b = b.trim();
            let port = b.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            match port {
                Some((h, Ok(p))) if !h.is_empty() && p > 0 => {}
                _ => return bad("brokers", format!("{b:?} is not HOST:PORT")),
            }
        }
        for (name, t) in [
            ("topic", Some(&self.topic)),
            ("output_topic", Some(&self.output_topic)),
            ("rejects_topic", self.rejects_topic.as_ref()),
        ] {
            if let Some(t) = t {
                check_topic_name(t).map_err(|reason| KafkaError::Param { name, reason })?;
            }
        }
        if self.output_topic == self.topic || self.rejects_topic.as_ref() == Some(&self.topic) {
            return bad(
                "output_topic",
                format!(
                    "results would go back into the input topic {:?}",
                    self.topic
                ),
            );
        }
        if self.group.trim().is_empty() || self.group.len() > 255 {
            return bad("group", format!("{:?}: 1–255 characters", self.group));
        }
        if !(1..=100_000).contains(&self.max_batch) {
            return bad(
                "max_batch",
                format!("{} is outside 1–100000", self.max_batch),
            );
        }
        if !(1..=600_000).contains(&self.max_wait_ms) {
            return bad(
                "max_wait_ms",
                format!("{} is outside 1–600000", self.max_wait_ms),
            );
        }
        if let Some(ms) = self.exit_when_idle_ms {
            if !(1..=86_400_000).contains(&ms) {
                return bad("exit_when_idle_ms", format!("{ms} is outside 1–86400000"));
            }
        }
        if self.state_alerts > 10_000_000 {
            return bad(
                "state_alerts",
                format!("{} is above 10000000", self.state_alerts),
            );
        }
        if self.reasons > 20 {
            return bad("reasons", format!("{} is above 20", self.reasons));
        }
        for (k, v) in &self.config {
            if k.trim().is_empty() || k.contains(char::is_whitespace) {
                return bad(
                    "config",
                    format!("{k:?}={v:?}: empty or spaced property name"),
                );
            }
            if RESERVED_CONFIG.contains(&k.as_str()) {
                return bad(
                    "config",
                    format!(
                        "{k} is set by threatrank stream itself (bootstrap.servers and group.id \
                         come from --brokers and --group; at-least-once depends on the others)"
                    ),
                );
            }
        }
        Ok(StreamKafkaValidParams(self.clone()))
    }
}

/// Kafka's rule for topic names: 1–249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
fn check_topic_name(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{t:?} is not a Kafka topic name (1–249 of A–Z a–z 0–9 . _ -)"
        ))
    }
}

/// Checked [`StreamKafkaParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamKafkaValidParams(StreamKafkaParams);

impl StreamKafkaValidParams {
    /// The checked values.
    pub fn get(&self) -> &StreamKafkaParams {
        &self.0
    }

    /// Where rejected messages go.
    pub fn rejects_topic(&self) -> &str {
        self.0
            .rejects_topic
            .as_deref()
            .unwrap_or(&self.0.output_topic)
    }
}

// ---- the Kafka-free core: messages → records -------------------------------------------

/// A consumed message, as batch assembly needs it (tests build them directly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMessage {
    /// topic it came from
    pub topic: String,
    /// partition
    pub partition: i32,
    /// offset within the partition
    pub offset: i64,
    /// message key, if any
    pub key: Option<Vec<u8>>,
    /// message value (`None`: a tombstone)
    pub value: Option<Vec<u8>>,
}

/// Which topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// the output topic (scored threats)
    Threats,
    /// the rejects topic (the output topic unless set)
    Rejects,
}

/// One message to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    /// target
    pub sink: Sink,
    /// key: the tenant id (decimal) for threats, the source message's key for rejects
    pub key: Option<Vec<u8>>,
    /// JSON value ([`ThreatOut`] or [`RejectedOut`])
    pub value: String,
}

/// A scored threat, the value of an output message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreatOut {
    /// always `threat`
    #[serde(rename = "type")]
    pub kind: String,
    /// tenant id (also the message key)
    pub tenant: u64,
    /// threat id, decimal (correlated ids exceed 2^53): the given incident id, or 2^63 + the
    /// smallest alert id of a correlated candidate threat
    pub id: String,
    /// the given incident id; `null` for a correlated candidate threat
    pub incident_id: Option<u64>,
    /// built by correlation from alerts without an incident id
    pub correlated: bool,
    /// every alert of the threat seen so far (held across batches), ascending
    pub alerts: Vec<u64>,
    /// correlated threats produced earlier whose alerts this one now holds (they are retired)
    pub supersedes: Vec<String>,
    /// predicted grade (`TruePositive`, `BenignPositive`, `FalsePositive`)
    pub grade: String,
    /// conformal grade set, e.g. `TP|BP`
    pub grade_set: String,
    /// the set holds more than one grade: a hunter should look
    pub uncertain: bool,
    /// 0–100, round(100 · P(TP))
    pub priority: u8,
    /// calibrated P(TP)
    pub p_tp: f32,
    /// calibrated P(BP)
    pub p_bp: f32,
    /// calibrated P(FP)
    pub p_fp: f32,
    /// distinct alerts
    pub n_alerts: u32,
    /// evidence rows (entities)
    pub n_evidence: u32,
    /// RFC 3339
    pub first_seen: String,
    /// RFC 3339
    pub last_seen: String,
    /// ATT&CK tactics, kill-chain order
    pub tactics: Vec<String>,
    /// most similar known ATT&CK group
    pub actor: Option<Actor>,
    /// most frequent detector
    pub detector: String,
    /// most frequent title
    pub title: String,
    /// most frequent category
    pub category: String,
    /// top reasons (empty unless `reasons` > 0)
    pub reasons: Vec<Reason>,
    /// first 16 hex digits of the model file's SHA-256
    pub model: String,
}

/// A rejected message, the value of a rejects message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedOut {
    /// always `rejected`
    #[serde(rename = "type")]
    pub kind: String,
    /// source topic
    pub topic: String,
    /// source partition
    pub partition: i32,
    /// source offset
    pub offset: i64,
    /// the field to blame, when one is
    pub field: Option<String>,
    /// why
    pub reason: String,
    /// the start of the value (at most [`REJECT_VALUE_BYTES`] bytes, lossy UTF-8)
    pub value: String,
}

/// Bytes of a rejected value copied into its [`RejectedOut`].
pub const REJECT_VALUE_BYTES: usize = 1024;

/// Counts of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BatchCounts {
    /// messages in the batch (= accepted + rejected)
    pub messages: u64,
    /// messages read as an alert
    pub accepted: u64,
    /// messages rejected
    pub rejected: u64,
    /// threats produced
    pub threats: u64,
}

/// What a batch turns into.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutput {
    /// records to produce: rejects (message order), then threats (tenant, id order)
    pub records: Vec<OutRecord>,
    /// counts
    pub counts: BatchCounts,
    /// offsets to commit once the records are acknowledged: `(topic, partition)` → the next
    /// offset to read (last offset of the batch + 1)
    pub commit: BTreeMap<(String, i32), i64>,
}

/// An alert's identity in the state: `(tenant, given incident id, alert id)`. A later message
/// with the same identity replaces the earlier one (a resent alert is one alert).
type AlertKey = (u64, Option<u64>, u64);

fn alert_key(e: &Evidence) -> AlertKey {
    (
        e.tenant.0,
        e.incident_given.then_some(e.incident.0),
        e.alert.0,
    )
}

/// The message's evidence rows, or why it was rejected (`(field, reason)`).
type Parsed = Result<Vec<Evidence>, (Option<String>, String)>;

/// Reads each message value as one native JSONL alert, with the `ingest` native reader (labels
/// never read). Line breaks inside a value are JSON whitespace (a raw one cannot sit inside a
/// JSON string), so they become spaces and a pretty-printed alert reads as one line; a value
/// holding two alerts is therefore rejected as invalid JSON, never split.
fn parse_messages(msgs: &[SourceMessage], params: &IngestValidParams) -> Vec<Parsed> {
    let mut out: Vec<Parsed> = Vec::with_capacity(msgs.len());
    let mut text = Vec::new();
    let mut line_of: Vec<usize> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        match &m.value {
            None => out.push(Err((None, "message without a value (tombstone)".into()))),
            Some(v) => {
                let v = v.strip_prefix(b"\xef\xbb\xbf").unwrap_or(v);
                if v.iter().all(u8::is_ascii_whitespace) {
                    out.push(Err((None, "empty message value".into())));
                } else {
                    out.push(Ok(Vec::new()));
                    text.extend(
                        v.iter()
                            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
                    );
                    text.push(b'\n');
                    line_of.push(i);
                }
            }
        }
    }
    if text.is_empty() {
        return out;
    }
    match ingest::read_from(&text[..], "kafka", InputFormat::NativeJsonl, params) {
        Ok(ing) => {
            for e in ing.evidence {
                if let Some(Ok(rows)) = line_of.get(e.record as usize).map(|&i| &mut out[i]) {
                    rows.push(e);
                }
            }
            for r in ing.report.rejected {
                if let Some(&i) = line_of.get(r.record as usize) {
                    out[i] = Err((r.column, r.reason));
                }
            }
        }
        // not reachable with an in-memory, non-empty input; kept total
        Err(e) => {
            for &i in &line_of {
                out[i] = Err((None, e.to_string()));
            }
        }
    }
    out
}

/// One held candidate threat: its alerts' evidence rows.
#[derive(Debug, Clone)]
struct Unit {
    alerts: BTreeMap<AlertKey, Vec<Evidence>>,
    seq: u64,
}

/// Cross-batch state: the alerts of recently touched threats, at most `cap` alerts, evicted
/// least recently touched threat first. Units are keyed like the library's incidents.
#[derive(Debug, Default)]
struct State {
    cap: usize,
    held: usize,
    seq: u64,
    units: BTreeMap<IncidentKey, Unit>,
    lru: BTreeSet<(u64, IncidentKey)>,
    /// loose alerts (no given incident id) by time: `(tenant, time, alert, unit)`
    loose_time: BTreeSet<(u64, i64, u64, IncidentKey)>,
    /// loose alert → (time, unit)
    loose_of: BTreeMap<(u64, u64), (i64, IncidentKey)>,
}

/// What absorbing a batch gives: the evidence of the threats to score and, for each, the
/// correlated threats it supersedes.
#[derive(Debug, Default)]
struct Absorbed {
    evidence: Vec<Evidence>,
    supersedes: BTreeMap<IncidentKey, Vec<u64>>,
}

const KEY_MIN: IncidentKey = IncidentKey {
    tenant: TenantId(0),
    incident: IncidentId(0),
};
const KEY_MAX: IncidentKey = IncidentKey {
    tenant: TenantId(u64::MAX),
    incident: IncidentId(u64::MAX),
};

impl State {
    fn new(cap: usize) -> State {
        State {
            cap,
            ..Default::default()
        }
    }

    fn insert(&mut self, key: IncidentKey, unit: Unit) {
        for (k, rows) in &unit.alerts {
            if k.1.is_none() {
                let t = rows.first().map_or(0, |e| e.timestamp);
                self.loose_time.insert((k.0, t, k.2, key));
                self.loose_of.insert((k.0, k.2), (t, key));
            }
        }
        self.held += unit.alerts.len();
        self.lru.insert((unit.seq, key));
        self.units.insert(key, unit);
    }

    fn remove(&mut self, key: &IncidentKey) -> Option<Unit> {
        let unit = self.units.remove(key)?;
        self.lru.remove(&(unit.seq, *key));
        self.held -= unit.alerts.len();
        for k in unit.alerts.keys() {
            if k.1.is_none() {
                if let Some((t, _)) = self.loose_of.remove(&(k.0, k.2)) {
                    self.loose_time.remove(&(k.0, t, k.2, *key));
                }
            }
        }
        Some(unit)
    }

    /// Adds a batch's alerts (later ones replace earlier ones of the same identity): pulls
    /// out the held threats they can join — their given incidents, and, for alerts without an
    /// incident id, every held candidate threat with an alert within the linker's window of
    /// the batch's alerts (a new alert links only to alerts that close in time; a held threat
    /// is whole, so linking to one of its alerts brings all of them) — correlates them
    /// together, and holds the result again. The threats that contain a batch alert are
    /// returned to be scored; the others go back unchanged. Then evicts down to `cap`.
    fn absorb(
        &mut self,
        new: BTreeMap<AlertKey, Vec<Evidence>>,
        linker: Option<&Linker>,
    ) -> Result<Absorbed, crate::correlate::CorrelateError> {
        self.seq += 1;
        let mut pull: BTreeSet<IncidentKey> = BTreeSet::new();
        let mut spans: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
        for (k, rows) in &new {
            let tenant = TenantId(k.0);
            match k.1 {
                Some(i) => {
                    pull.insert(IncidentKey {
                        tenant,
                        incident: IncidentId(i),
                    });
                }
                None => {
                    if let Some((_, u)) = self.loose_of.get(&(k.0, k.2)) {
                        pull.insert(*u);
                    }
                    if linker.is_none() {
                        // without a linker a loose alert is its own incident, keyed by its id
                        pull.insert(IncidentKey {
                            tenant,
                            incident: IncidentId(k.2),
                        });
                    }
                    let t = rows.first().map_or(0, |e| e.timestamp);
                    let s = spans.entry(k.0).or_insert((t, t));
                    *s = (s.0.min(t), s.1.max(t));
                }
            }
        }
        if let Some(l) = linker {
            let w = l.window_seconds();
            for (&tenant, &(lo, hi)) in &spans {
                let from = (tenant, lo.saturating_sub(w), 0, KEY_MIN);
                let to = (tenant, hi.saturating_add(w), u64::MAX, KEY_MAX);
                pull.extend(self.loose_time.range(from..=to).map(|x| x.3));
            }
        }
        let mut alerts: BTreeMap<AlertKey, Vec<Evidence>> = BTreeMap::new();
        let mut old_seq: BTreeMap<IncidentKey, u64> = BTreeMap::new();
        let mut old_unit: BTreeMap<AlertKey, IncidentKey> = BTreeMap::new();
        for key in &pull {
            if let Some(unit) = self.remove(key) {
                old_seq.insert(*key, unit.seq);
                for (k, rows) in unit.alerts {
                    old_unit.insert(k, *key);
                    alerts.insert(k, rows);
                }
            }
        }
        let fresh: BTreeSet<AlertKey> = new.keys().copied().collect();
        alerts.extend(new);
        let evidence: Vec<Evidence> = alerts.into_values().flatten().collect();
        let corr = match linker {
            Some(l) => l.correlate(&evidence)?,
            None => group_incidents(&evidence),
        };
        let mut slots: Vec<Option<Evidence>> = evidence.into_iter().map(Some).collect();
        let mut out = Absorbed::default();
        for inc in &corr.incidents {
            let mut unit = Unit {
                alerts: BTreeMap::new(),
                seq: 0,
            };
            for &r in &inc.evidence {
                if let Some(e) = slots[r as usize].take() {
                    unit.alerts.entry(alert_key(&e)).or_default().push(e);
                }
            }
            let touched = unit.alerts.keys().any(|k| fresh.contains(k));
            if touched {
                unit.seq = self.seq;
                let retired: BTreeSet<u64> = unit
                    .alerts
                    .keys()
                    .filter_map(|k| old_unit.get(k))
                    .filter(|u| **u != inc.key && u.incident.is_correlated())
                    .map(|u| u.incident.0)
                    .collect();
                out.supersedes
                    .insert(inc.key, retired.into_iter().collect());
                out.evidence.extend(unit.alerts.values().flatten().cloned());
            } else {
                unit.seq = old_seq.get(&inc.key).copied().unwrap_or(self.seq);
            }
            self.insert(inc.key, unit);
        }
        while self.held > self.cap {
            let Some(&(_, key)) = self.lru.first() else {
                break;
            };
            self.remove(&key);
        }
        Ok(out)
    }
}

/// The Kafka-free core of `threatrank stream`: turns micro-batches of messages into the
/// records to produce, holding threats across batches (module docs).
///
/// ```
/// use threatrank::kafka::{BatchScorer, SourceMessage, Model};
/// let kn = threatrank::signals::Knowledge::development().unwrap();
/// let model = Model::load("models/default.json.gz".as_ref(), &kn).unwrap();
/// let mut scorer = BatchScorer::new(&model, &kn, 100_000, 0).unwrap();
/// let alert = r#"{"tenant": 1, "alert_id": 7, "incident_id": 3,
///   "timestamp": "2024-06-06T17:32:50Z", "detector": "d", "title": "t", "category": "Execution"}"#;
/// let msg = SourceMessage { topic: "alerts".into(), partition: 0, offset: 0, key: None,
///                           value: Some(alert.as_bytes().to_vec()) };
/// let out = scorer.process(&[msg]).unwrap();
/// assert_eq!((out.counts.accepted, out.counts.threats), (1, 1));
/// ```
pub struct BatchScorer<'a> {
    model: &'a Model,
    kn: &'a Knowledge,
    reasons: usize,
    ingest: IngestValidParams,
    state: State,
}

impl<'a> BatchScorer<'a> {
    /// A scorer holding at most `state_alerts` alerts across batches, with `reasons` reasons
    /// per threat (0: none, and no TreeSHAP).
    pub fn new(
        model: &'a Model,
        kn: &'a Knowledge,
        state_alerts: usize,
        reasons: usize,
    ) -> Result<Self, KafkaError> {
        let ingest = IngestParams::default()
            .read_labels(false)
            .check()
            .map_err(|e| KafkaError::Param {
                name: "ingest",
                reason: e.to_string(),
            })?;
        Ok(BatchScorer {
            model,
            kn,
            reasons,
            ingest,
            state: State::new(state_alerts),
        })
    }

    /// Alerts held across batches now.
    pub fn held_alerts(&self) -> usize {
        self.state.held
    }

    /// Scores a micro-batch: every message is accepted or rejected, every threat holding one
    /// of the batch's alerts is scored with all of its held alerts.
    pub fn process(&mut self, msgs: &[SourceMessage]) -> Result<BatchOutput, KafkaError> {
        let mut out = BatchOutput {
            records: Vec::new(),
            counts: BatchCounts {
                messages: msgs.len() as u64,
                ..Default::default()
            },
            commit: BTreeMap::new(),
        };
        for m in msgs {
            let next = out
                .commit
                .entry((m.topic.clone(), m.partition))
                .or_insert(m.offset + 1);
            *next = (*next).max(m.offset + 1);
        }
        let mut new: BTreeMap<AlertKey, Vec<Evidence>> = BTreeMap::new();
        for (m, parsed) in msgs.iter().zip(parse_messages(msgs, &self.ingest)) {
            match parsed {
                Ok(rows) if !rows.is_empty() => {
                    out.counts.accepted += 1;
                    new.insert(alert_key(&rows[0]), rows);
                }
                Ok(_) => {
                    out.counts.rejected += 1;
                    out.records
                        .push(rejected(m, None, "no alert read from the value".into())?);
                }
                Err((field, reason)) => {
                    out.counts.rejected += 1;
                    out.records.push(rejected(m, field, reason)?);
                }
            }
        }
        if new.is_empty() {
            return Ok(out);
        }
        let artifact = &self.model.artifact;
        let absorbed = self
            .state
            .absorb(new, artifact.correlation.as_ref())
            .map_err(PipelineError::from)?;
        let none = |_: &[ScoredIncident]| Vec::new();
        let select: Option<pipeline::ExplainSelect<'_>> =
            if self.reasons > 0 { None } else { Some(&none) };
        let scored = pipeline::score_loaded_explaining(
            artifact,
            Loaded::in_memory(absorbed.evidence),
            self.reasons,
            self.kn,
            select,
        )?;
        for (inc, s) in scored.loaded.corr.incidents.iter().zip(&scored.incidents) {
            let supersedes = absorbed
                .supersedes
                .get(&inc.key)
                .map(|v| v.iter().map(u64::to_string).collect())
                .unwrap_or_default();
            let threat = threat_out(
                s,
                inc.alerts.iter().map(|a| a.0).collect(),
                supersedes,
                &self.model.id,
            );
            out.records.push(OutRecord {
                sink: Sink::Threats,
                key: Some(s.key.tenant.0.to_string().into_bytes()),
                value: encode("threat", &threat)?,
            });
            out.counts.threats += 1;
        }
        Ok(out)
    }
}

/// JSON of one output message; an error rather than an empty message.
fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<String, KafkaError> {
    serde_json::to_string(value).map_err(|source| KafkaError::Encode { what, source })
}

fn rejected(
    m: &SourceMessage,
    field: Option<String>,
    reason: String,
) -> Result<OutRecord, KafkaError> {
    let value = m.value.as_deref().unwrap_or_default();
    let head = &value[..value.len().min(REJECT_VALUE_BYTES)];
    let r = RejectedOut {
        kind: "rejected".into(),
        topic: m.topic.clone(),
        partition: m.partition,
        offset: m.offset,
        field,
        reason,
        value: String::from_utf8_lossy(head).into_owned(),
    };
    Ok(OutRecord {
        sink: Sink::Rejects,
        key: m.key.clone(),
        value: encode("rejected", &r)?,
    })
}

fn threat_out(
    s: &ScoredIncident,
    alerts: Vec<u64>,
    supersedes: Vec<String>,
    model: &str,
) -> ThreatOut {
    let correlated = s.key.incident.is_correlated();
    ThreatOut {
        kind: "threat".into(),
        tenant: s.key.tenant.0,
        id: s.key.incident.0.to_string(),
        incident_id: (!correlated).then_some(s.key.incident.0),
        correlated,
        alerts,
        supersedes,
        grade: s.predicted.name().into(),
        grade_set: s.grade_set.to_string(),
        uncertain: s.is_uncertain(),
        priority: s.priority,
        p_tp: s.probs[0],
        p_bp: s.probs[1],
        p_fp: s.probs[2],
        n_alerts: s.n_alerts,
        n_evidence: s.n_evidence,
        first_seen: format_rfc3339(s.first_seen),
        last_seen: format_rfc3339(s.last_seen),
        tactics: s.tactics.clone(),
        actor: s.actor.clone(),
        detector: s.detector.clone(),
        title: s.title.clone(),
        category: s.category.clone(),
        reasons: s.reasons.clone(),
        model: model.into(),
    }
}

/// A loaded, checked model and the id its results carry.
#[derive(Debug)]
pub struct Model {
    /// the artifact
    pub artifact: Artifact,
    /// first 16 hex digits of the file's SHA-256
    pub id: String,
}

impl Model {
    /// Loads an artifact and checks it against the pseudonymization key (as scoring would on
    /// its first batch).
    pub fn load(path: &std::path::Path, kn: &Knowledge) -> Result<Model, KafkaError> {
        let bytes = std::fs::read(path).map_err(|source| ArtifactError::Io {
            file: path.display().to_string(),
            source,
        })?;
        let sha = crate::matrix::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let artifact = Artifact::load(path)?;
        if kn.snapshot.is_none() {
            artifact
                .features
                .global_signals()
                .check_key(&kn.key)
                .map_err(|source| KafkaError::Key {
                    model: path.display().to_string(),
                    source,
                })?;
        }
        Ok(Model {
            artifact,
            id: sha[..16].to_string(),
        })
    }
}

// ---- the Kafka loop ------------------------------------------------------------------

/// A stop request shared with a running stream (signal handler, test, caller): the current
/// batch is finished and committed, then [`run`] returns.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Not stopped.
    pub fn new() -> Stop {
        Stop::default()
    }
    /// Asks the stream to stop after its current batch.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Installs SIGINT (Ctrl-C) and SIGTERM handlers that ask `stop` to stop; a second signal
/// exits the process at once with status 130 (for a stream stuck on an unreachable broker).
/// The handlers are in place when this returns.
pub fn stop_on_signals(stop: &Stop) -> Result<(), KafkaError> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = |what: &str| {
        let what = what.to_string();
        move |source| KafkaError::Io { what, source }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(io("signal runtime"))?;
    let (mut int, mut term) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::interrupt()).map_err(io("SIGINT handler"))?,
            signal(SignalKind::terminate()).map_err(io("SIGTERM handler"))?,
        )
    };
    let stop = stop.clone();
    std::thread::Builder::new()
        .name("threatrank-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                    if stop.is_stopped() {
                        std::process::exit(130);
                    }
                    stop.stop();
                }
            })
        })
        .map_err(io("signal thread"))?;
    Ok(())
}

/// Something a running stream reports (the CLI prints them on stderr).
#[derive(Debug)]
pub enum Event<'a> {
    /// partitions assigned to this consumer
    Assigned(&'a [(String, i32)]),
    /// partitions taken away; `released` uncommitted messages of them were dropped from the
    /// batch being gathered (their new owner reads them again)
    Revoked {
        /// the partitions
        partitions: &'a [(String, i32)],
        /// messages dropped from the pending batch
        released: u64,
    },
    /// a batch was produced and acknowledged, and committed (or its commit deferred by a
    /// rebalance, reported as a warning)
    Batch {
        /// its counts
        batch: &'a BatchCounts,
        /// totals so far
        totals: &'a StreamKafkaOutcome,
    },
    /// a client error librdkafka reported (it retries on its own)
    Warning(&'a str),
}

/// Totals of a stream run: `messages == accepted + rejected + released`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StreamKafkaOutcome {
    /// messages consumed
    pub messages: u64,
    /// read as an alert
    pub accepted: u64,
    /// rejected (each produced to the rejects topic)
    pub rejected: u64,
    /// dropped from a pending batch on a rebalance, uncommitted (their new owner reads them)
    pub released: u64,
    /// threats produced
    pub threats: u64,
    /// batches produced and acknowledged (and committed, or their commit deferred by a
    /// rebalance and retried)
    pub batches: u64,
    /// commits a rebalance deferred (retried once the group was stable)
    pub deferred_commits: u64,
    /// partitions whose acknowledged offsets were never committed because they moved to
    /// another consumer first (it scores those messages again)
    pub uncommitted_partitions: u64,
    /// messages fetched again after a rebalance handed their partition back before its
    /// deferred commit went through, skipped: scored here already (not in `messages`)
    pub skipped: u64,
    /// alerts held across batches at the end
    pub held_alerts: usize,
    /// seconds spent
    pub seconds: f64,
    /// seconds of the slowest batch, from taking it to its commit (scoring, producing,
    /// acknowledgements): time that never counts as idle
    pub slowest_batch_seconds: f64,
}

impl StreamKafkaOutcome {
    /// The counter line printed at exit.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} messages in = {} accepted + {} rejected",
            self.messages, self.accepted, self.rejected
        );
        if self.released > 0 {
            s += &format!(" + {} handed back on rebalance", self.released);
        }
        s += &format!(
            "; {} threats out; {} batches in {:.1} s (slowest {:.2} s); {} alerts held",
            self.threats, self.batches, self.seconds, self.slowest_batch_seconds, self.held_alerts
        );
        if self.deferred_commits > 0 || self.uncommitted_partitions > 0 {
            s += &format!(
                "; {} commits deferred by rebalances, {} partitions left uncommitted to their \
                 new owner, {} messages fetched again skipped",
                self.deferred_commits, self.uncommitted_partitions, self.skipped
            );
        }
        s
    }
}

/// What the clients' librdkafka threads report, drained by the loop.
#[derive(Debug)]
enum ClientEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
    Error(String),
}

#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<ClientEvent>>>);

impl Inbox {
    fn push(&self, e: ClientEvent) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
    fn take(&self) -> Vec<ClientEvent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for Inbox {
    fn error(&self, error: RdError, reason: &str) {
        self.push(ClientEvent::Error(format!("{error}: {reason}")));
    }
}

impl ConsumerContext for Inbox {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.push(ClientEvent::Revoked(partitions(tpl)));
        }
    }
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.push(ClientEvent::Assigned(partitions(tpl))),
            Rebalance::Error(e) => self.push(ClientEvent::Error(format!("rebalance: {e}"))),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A client's configuration: our defaults, then the caller's `config`, then the brokers and
/// the settings at-least-once depends on (which `config` may not override, see
/// [`RESERVED_CONFIG`]).
fn client_config(
    p: &StreamKafkaParams,
    defaults: &[(&str, &str)],
    forced: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", "threatrank-stream");
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &p.config {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &p.brokers);
    for (k, v) in forced {
        c.set(*k, *v);
    }
    c
}

/// Loads the model named in `params`, then [`run`]s.
pub fn stream(
    params: &StreamKafkaParams,
    kn: &Knowledge,
    stop: &Stop,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<StreamKafkaOutcome, KafkaError> {
    let valid = params.check()?;
    let model = Model::load(&params.model, kn)?;
    run(&model, kn, &valid, stop, events)
}

/// Commit errors that mean "the group is rebalancing" (or our member is rejoining): the
/// commit is retried once the group is stable, for the partitions still ours.
const REBALANCING: [RDKafkaErrorCode; 5] = [
    RDKafkaErrorCode::RebalanceInProgress,
    RDKafkaErrorCode::IllegalGeneration,
    RDKafkaErrorCode::UnknownMemberId,
    RDKafkaErrorCode::StaleMemberEpoch,
    RDKafkaErrorCode::AssignmentLost,
];

/// How long a stopping stream keeps retrying a commit deferred by a rebalance.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(30);

fn offsets_text(offsets: &[((String, i32), i64)]) -> String {
    let v: Vec<String> = offsets
        .iter()
        .map(|((t, p), o)| format!("{t}/{p}@{o}"))
        .collect();
    v.join(",")
}

/// The consumer side of a run: assignment, the batch being gathered, and the offsets whose
/// results were acknowledged but not committed yet.
struct Session<'c> {
    consumer: &'c BaseConsumer<Inbox>,
    inbox: Inbox,
    assigned: BTreeSet<(String, i32)>,
    pending: Vec<SourceMessage>,
    first_at: Option<Instant>,
    last_activity: Instant,
    /// `(topic, partition)` → next offset, results acknowledged, commit not yet accepted
    owed: BTreeMap<(String, i32), i64>,
    /// `(topic, partition)` → next offset whose results this consumer had acknowledged, for
    /// the partitions it has held since: a message below it was scored here already (a
    /// partition handed back by a rebalance is fetched again from its last commit)
    done: BTreeMap<(String, i32), i64>,
    deferred: bool,
    last_try: Instant,
    totals: StreamKafkaOutcome,
}

impl Session<'_> {
    /// Applies what the clients reported: assignments, revocations (the pending messages of a
    /// revoked partition are dropped: they are uncommitted, its next owner reads them),
    /// errors.
    fn drain_inbox(&mut self, events: &mut dyn FnMut(Event<'_>)) {
        for e in self.inbox.take() {
            match e {
                ClientEvent::Assigned(parts) => {
                    self.assigned.extend(parts.iter().cloned());
                    self.last_activity = Instant::now();
                    events(Event::Assigned(&parts));
                    // owed offsets of partitions another member owns now are left to it
                    let assigned = &self.assigned;
                    self.done.retain(|k, _| assigned.contains(k));
                    let lost: Vec<((String, i32), i64)> = self
                        .owed
                        .iter()
                        .filter(|(k, _)| !self.assigned.contains(*k))
                        .map(|(k, o)| (k.clone(), *o))
                        .collect();
                    if !lost.is_empty() {
                        for (k, _) in &lost {
                            self.owed.remove(k);
                        }
                        self.totals.uncommitted_partitions += lost.len() as u64;
                        events(Event::Warning(&format!(
                            "offsets {} were not committed before their partitions moved to \
                             another consumer: it scores those messages again (duplicates)",
                            offsets_text(&lost)
                        )));
                    }
                }
                ClientEvent::Revoked(parts) => {
                    let gone: BTreeSet<(&str, i32)> =
                        parts.iter().map(|(t, p)| (t.as_str(), *p)).collect();
                    let before = self.pending.len();
                    self.pending
                        .retain(|m| !gone.contains(&(m.topic.as_str(), m.partition)));
                    let released = (before - self.pending.len()) as u64;
                    self.totals.messages += released;
                    self.totals.released += released;
                    for g in &parts {
                        self.assigned.remove(g);
                    }
                    if self.pending.is_empty() {
                        self.first_at = None;
                    }
                    events(Event::Revoked {
                        partitions: &parts,
                        released,
                    });
                }
                ClientEvent::Error(text) => events(Event::Warning(&text)),
            }
        }
    }

    /// Commits the owed offsets of the partitions still ours (synchronously). A rebalance in
    /// progress defers the commit (retried by the loop); any other failure ends the run.
    fn commit_owed(&mut self, events: &mut dyn FnMut(Event<'_>)) -> Result<(), KafkaError> {
        self.last_try = Instant::now();
        let due: Vec<((String, i32), i64)> = self
            .owed
            .iter()
            .filter(|(k, _)| self.assigned.contains(*k))
            .map(|(k, o)| (k.clone(), *o))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &due {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|source| KafkaError::Commit {
                    offsets: offsets_text(&due),
                    source,
                })?;
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                for (k, o) in &due {
                    if self.owed.get(k) == Some(o) {
                        self.owed.remove(k);
                    }
                }
                self.deferred = false;
                Ok(())
            }
            Err(RdError::ConsumerCommit(code)) if REBALANCING.contains(&code) => {
                if !self.deferred {
                    self.deferred = true;
                    self.totals.deferred_commits += 1;
                    events(Event::Warning(&format!(
                        "commit of {} deferred: {code}; retried once the group is stable",
                        offsets_text(&due)
                    )));
                }
                Ok(())
            }
            Err(source) => Err(KafkaError::Commit {
                offsets: offsets_text(&due),
                source,
            }),
        }
    }
}

/// Consumes, scores and produces until `stop` (finishing the batch in hand) or, with
/// `exit_when_idle_ms`, until no message came for that long while holding partitions.
/// Each batch: score ([`BatchScorer::process`]), produce every record, wait for every
/// acknowledgement, then commit the batch's offsets (synchronously). An unacknowledged record
/// or a failed commit ends the run with an error (at-least-once: a restart replays the batch);
/// a commit refused because the group is rebalancing is retried once it is stable, for the
/// partitions still ours (those that moved are scored again by their new owner). A stopping
/// run retries such a commit for up to 30 s, then fails.
pub fn run(
    model: &Model,
    kn: &Knowledge,
    params: &StreamKafkaValidParams,
    stop: &Stop,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<StreamKafkaOutcome, KafkaError> {
    let p = params.get();
    let start = Instant::now();
    let inbox = Inbox::default();
    let client = |what: &str| {
        let what = what.to_string();
        move |source| KafkaError::Client { what, source }
    };
    let consumer: BaseConsumer<Inbox> = client_config(
        p,
        &[("auto.offset.reset", "earliest")],
        &[
            ("group.id", &p.group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ],
    )
    .create_with_context(inbox.clone())
    .map_err(client("consumer"))?;
    // Idempotence: a retried send is neither duplicated nor reordered, so a tenant's results
    // stay in order in their partition.
    let producer: FutureProducer<Inbox> = client_config(
        p,
        &[("linger.ms", "5")],
        &[("enable.idempotence", "true"), ("acks", "all")],
    )
    .create_with_context(inbox.clone())
    .map_err(client("producer"))?;
    consumer
        .subscribe(&[&p.topic])
        .map_err(client(&format!("subscribe {}", p.topic)))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|source| KafkaError::Io {
            what: "delivery runtime".into(),
            source,
        })?;
    let mut scorer = BatchScorer::new(model, kn, p.state_alerts, p.reasons)?;
    let mut s = Session {
        consumer: &consumer,
        inbox,
        assigned: BTreeSet::new(),
        pending: Vec::new(),
        first_at: None,
        last_activity: Instant::now(),
        owed: BTreeMap::new(),
        done: BTreeMap::new(),
        deferred: false,
        last_try: Instant::now(),
        totals: StreamKafkaOutcome::default(),
    };
    let max_wait = Duration::from_millis(p.max_wait_ms);
    let idle = p.exit_when_idle_ms.map(Duration::from_millis);
    let retry = Duration::from_millis(200);
    loop {
        s.drain_inbox(events);
        if !s.owed.is_empty() && s.last_try.elapsed() >= retry {
            s.commit_owed(events)?;
        }
        let stopping = stop.is_stopped();
        let due = s.first_at.is_some_and(|t| t.elapsed() >= max_wait);
        if !s.pending.is_empty() && (stopping || due || s.pending.len() >= p.max_batch) {
            let batch = std::mem::take(&mut s.pending);
            s.first_at = None;
            let began = Instant::now();
            let out = produce_batch(&mut scorer, &batch, &producer, params, &rt)?;
            for (k, next) in out.commit {
                let d = s.done.entry(k.clone()).or_insert(next);
                *d = (*d).max(next);
                let o = s.owed.entry(k).or_insert(next);
                *o = (*o).max(next);
            }
            s.commit_owed(events)?;
            let t = &mut s.totals;
            t.messages += out.counts.messages;
            t.accepted += out.counts.accepted;
            t.rejected += out.counts.rejected;
            t.threats += out.counts.threats;
            t.batches += 1;
            t.held_alerts = scorer.held_alerts();
            t.seconds = start.elapsed().as_secs_f64();
            t.slowest_batch_seconds = t.slowest_batch_seconds.max(began.elapsed().as_secs_f64());
            // idle is time spent waiting for messages, not scoring them
            s.last_activity = Instant::now();
            events(Event::Batch {
                batch: &out.counts,
                totals: &s.totals,
            });
            continue;
        }
        if stopping {
            break;
        }
        if let Some(idle) = idle {
            let quiet = s.pending.is_empty() && s.owed.is_empty();
            if quiet && !s.assigned.is_empty() && s.last_activity.elapsed() >= idle {
                break;
            }
        }
        let mut timeout = Duration::from_millis(100);
        if let Some(t) = s.first_at {
            timeout = timeout.min(max_wait.saturating_sub(t.elapsed()));
        }
        match consumer.poll(timeout) {
            None => {}
            Some(Ok(m))
                if s.done.get(&(m.topic().to_string(), m.partition())) > Some(&m.offset()) =>
            {
                // fetched again after a rebalance handed the partition back before its
                // deferred commit went through: scored and acknowledged here already
                s.totals.skipped += 1;
            }
            Some(Ok(m)) => {
                s.pending.push(SourceMessage {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                });
                s.first_at.get_or_insert_with(Instant::now);
                s.last_activity = Instant::now();
            }
            Some(Err(e)) => s.inbox.push(ClientEvent::Error(format!("consumer: {e}"))),
        }
    }
    // Offsets still owed (a rebalance refused their commit): retry while the group settles.
    // Messages polled meanwhile are not scored and stay uncommitted.
    let deadline = Instant::now() + FINAL_COMMIT_WAIT;
    while !s.owed.is_empty() {
        s.drain_inbox(events);
        s.commit_owed(events)?;
        if s.owed.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let owed: Vec<((String, i32), i64)> =
                s.owed.iter().map(|(k, o)| (k.clone(), *o)).collect();
            return Err(KafkaError::Commit {
                offsets: offsets_text(&owed),
                source: RdError::ConsumerCommit(RDKafkaErrorCode::RebalanceInProgress),
            });
        }
        let _ = consumer.poll(retry);
    }
    s.totals.held_alerts = scorer.held_alerts();
    s.totals.seconds = start.elapsed().as_secs_f64();
    Ok(s.totals)
}

/// Scores one batch, produces its records and waits for every acknowledgement; returns the
/// batch (its counts and the offsets to commit).
fn produce_batch(
    scorer: &mut BatchScorer<'_>,
    batch: &[SourceMessage],
    producer: &FutureProducer<Inbox>,
    params: &StreamKafkaValidParams,
    rt: &tokio::runtime::Runtime,
) -> Result<BatchOutput, KafkaError> {
    let out = scorer.process(batch)?;
    let p = params.get();
    let mut inflight = Vec::with_capacity(out.records.len());
    for r in &out.records {
        let topic = match r.sink {
            Sink::Threats => p.output_topic.as_str(),
            Sink::Rejects => params.rejects_topic(),
        };
        let mut record = FutureRecord::<[u8], str>::to(topic).payload(r.value.as_str());
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    inflight.push((topic, f));
                    break;
                }
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // librdkafka's queue is full: its own thread drains it
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, _)) => {
                    return Err(KafkaError::Delivery {
                        topic: topic.to_string(),
                        source,
                    })
                }
            }
        }
    }
    rt.block_on(async {
        for (topic, f) in inflight {
            let source = match f.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e,
                // the producer dropped the message
                Err(_) => RdError::Canceled,
            };
            return Err(KafkaError::Delivery {
                topic: topic.to_string(),
                source,
            });
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::CorrelateParams;
    use crate::domain::{AlertId, ENTITY_COLUMNS};

    fn params() -> StreamKafkaParams {
        StreamKafkaParams::new("127.0.0.1:9092,broker-2:9093", "alerts", "scored")
    }

    fn param_error(p: &StreamKafkaParams) -> &'static str {
        match p.check() {
            Err(KafkaError::Param { name, .. }) => name,
            other => panic!("expected a parameter error, got {other:?}"),
        }
    }

    #[test]
    fn a_message_that_cannot_be_encoded_is_an_error_not_an_empty_value() {
        /// serde refuses this value, as it would a map with non-string keys
        struct Unencodable;
        impl Serialize for Unencodable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("refused"))
            }
        }
        match encode("threat", &Unencodable) {
            Err(e @ KafkaError::Encode { what: "threat", .. }) => {
                assert!(e.to_string().contains("refused"), "{e}");
                assert!(std::error::Error::source(&e).is_some());
            }
            other => panic!("expected an encoding error, got {other:?}"),
        }
        assert_eq!(encode("threat", &[1, 2]).unwrap(), "[1,2]");
    }

    #[test]
    fn params_check_names_the_bad_one() {
        let ok = params().check().unwrap();
        assert_eq!(ok.rejects_topic(), "scored");
        assert_eq!(ok.get().group, "threatrank");
        let r = params()
            .rejects_topic(Some("rejects".into()))
            .check()
            .unwrap();
        assert_eq!(r.rejects_topic(), "rejects");
        let cases: Vec<(StreamKafkaParams, &str)> = vec![
            (StreamKafkaParams::new("", "a", "b"), "brokers"),
            (StreamKafkaParams::new("host", "a", "b"), "brokers"),
            (StreamKafkaParams::new("host:0", "a", "b"), "brokers"),
            (StreamKafkaParams::new("h:1,:2", "a", "b"), "brokers"),
            (StreamKafkaParams::new("h:1", "", "b"), "topic"),
            (StreamKafkaParams::new("h:1", "a b", "b"), "topic"),
            (StreamKafkaParams::new("h:1", "a", ".."), "output_topic"),
            (StreamKafkaParams::new("h:1", "a", "a"), "output_topic"),
            (
                params().rejects_topic(Some("alerts".into())),
                "output_topic",
            ),
            (params().rejects_topic(Some("x/y".into())), "rejects_topic"),
            (params().group(" "), "group"),
            (params().max_batch(0), "max_batch"),
            (params().max_batch(100_001), "max_batch"),
            (params().max_wait_ms(0), "max_wait_ms"),
            (params().exit_when_idle_ms(Some(0)), "exit_when_idle_ms"),
            (params().state_alerts(10_000_001), "state_alerts"),
            (params().reasons(21), "reasons"),
            (params().config("enable.auto.commit", "true"), "config"),
            (params().config("group.id", "other"), "config"),
            (params().config("", "x"), "config"),
        ];
        for (p, name) in &cases {
            assert_eq!(param_error(p), *name, "{p:?}");
        }
        // limits themselves are fine
        let edge = params()
            .max_batch(100_000)
            .max_wait_ms(1)
            .exit_when_idle_ms(Some(1))
            .state_alerts(0)
            .reasons(20)
            .config("security.protocol", "SASL_SSL");
        assert!(edge.check().is_ok());
        assert!(StreamKafkaParams::new("h:1", "a.b_c-9", "x".repeat(249))
            .check()
            .is_ok());
        assert_eq!(
            param_error(&StreamKafkaParams::new("h:1", "a", "x".repeat(250))),
            "output_topic"
        );
    }

    #[test]
    fn params_round_trip_through_serde_with_defaults() {
        let p: StreamKafkaParams =
            serde_json::from_str(r#"{"brokers": "k:9092", "topic": "a", "output_topic": "b"}"#)
                .unwrap();
        assert_eq!(p, StreamKafkaParams::new("k:9092", "a", "b"));
        assert_eq!(
            (p.max_batch, p.max_wait_ms, p.state_alerts),
            (500, 1000, 100_000)
        );
    }

    fn msg(offset: i64, value: Option<&str>) -> SourceMessage {
        SourceMessage {
            topic: "alerts".into(),
            partition: 2,
            offset,
            key: Some(b"k".to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    const GOOD: &str = r#"{"tenant": 4, "alert_id": 9, "incident_id": 1, "timestamp": "2024-06-01T00:00:00Z", "detector": "d", "title": "t", "category": "Execution", "entities": [{"type": "Machine", "value": "h"}, {"type": "User", "value": 3}], "grade": "not even read"}"#;

    #[test]
    fn each_message_is_one_alert_or_one_rejection() {
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(GOOD).unwrap())
                .unwrap();
        assert!(pretty.contains('\n'));
        let two = format!("{GOOD}\n{GOOD}");
        let msgs = vec![
            msg(10, Some(GOOD)),
            msg(11, None),
            msg(12, Some(" \r\n ")),
            msg(13, Some(&pretty)),
            msg(14, Some(&two)),
            msg(15, Some(r#"{"tenant": 4}"#)),
            msg(16, Some("not json")),
            msg(17, Some(&format!("\u{feff}{GOOD}"))),
            msg(18, Some(&GOOD.replace("2024-06-01T00:00:00Z", "yesterday"))),
        ];
        let p = IngestParams::default().read_labels(false).check().unwrap();
        let parsed = parse_messages(&msgs, &p);
        assert_eq!(parsed.len(), msgs.len());
        let ok: Vec<usize> = (0..parsed.len()).filter(|&i| parsed[i].is_ok()).collect();
        assert_eq!(ok, [0, 3, 7], "{parsed:#?}");
        for &i in &ok {
            let rows = parsed[i].as_ref().unwrap();
            assert_eq!(rows.len(), 2, "one row per entity");
            assert!(rows
                .iter()
                .all(|e| e.alert == AlertId(9) && e.grade.is_none()));
        }
        let why = |i: usize| parsed[i].clone().unwrap_err();
        assert_eq!(why(1).1, "message without a value (tombstone)");
        assert_eq!(why(2).1, "empty message value");
        assert!(why(4).1.starts_with("invalid JSON"), "{:?}", why(4));
        assert_eq!(
            why(5),
            (Some("alert_id".into()), "missing required field".into())
        );
        assert!(why(6).1.starts_with("invalid JSON"));
        assert_eq!(why(8).0.as_deref(), Some("timestamp"));
    }

    fn linker() -> Linker {
        Linker::learn(&[], &CorrelateParams::default().check().unwrap())
    }

    /// One evidence row on a device (`DeviceId`), at `t` seconds.
    fn ev(tenant: u64, incident: Option<u64>, alert: u64, t: i64, device: u64) -> Evidence {
        let mut e = Evidence {
            tenant: TenantId(tenant),
            incident: IncidentId(incident.unwrap_or(alert)),
            incident_given: incident.is_some(),
            alert: AlertId(alert),
            timestamp: t,
            detector: "d".into(),
            title: "t".into(),
            category: "Execution".into(),
            entity_type: "Machine".into(),
            ..Default::default()
        };
        let slot = ENTITY_COLUMNS
            .iter()
            .position(|c| *c == "DeviceId")
            .unwrap();
        e.entities.codes[slot] = Some(device);
        e
    }

    fn batch(rows: Vec<Evidence>) -> BTreeMap<AlertKey, Vec<Evidence>> {
        let mut m: BTreeMap<AlertKey, Vec<Evidence>> = BTreeMap::new();
        for e in rows {
            m.entry(alert_key(&e)).or_default().push(e);
        }
        m
    }

    /// The scored threats of an absorbed batch: key → alert ids.
    fn threats(a: &Absorbed) -> BTreeMap<(u64, u64), Vec<u64>> {
        let mut m: BTreeMap<(u64, u64), BTreeSet<u64>> = BTreeMap::new();
        let corr = linker().correlate(&a.evidence).unwrap();
        for inc in corr.incidents {
            m.entry((inc.key.tenant.0, inc.key.incident.0))
                .or_default()
                .extend(inc.alerts.iter().map(|x| x.0));
        }
        m.into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    }

    const C: u64 = crate::domain::CORRELATED_INCIDENT_BIT;

    #[test]
    fn an_incident_spanning_batches_is_scored_with_every_alert_seen() {
        let l = linker();
        let mut s = State::new(100);
        let a = s
            .absorb(
                batch(vec![ev(1, Some(5), 10, 0, 1), ev(2, Some(5), 11, 0, 1)]),
                Some(&l),
            )
            .unwrap();
        assert_eq!(
            threats(&a),
            BTreeMap::from([((1, 5), vec![10]), ((2, 5), vec![11])]),
            "same incident id in two tenants: two threats"
        );
        let b = s
            .absorb(batch(vec![ev(1, Some(5), 12, 50, 9)]), Some(&l))
            .unwrap();
        assert_eq!(threats(&b), BTreeMap::from([((1, 5), vec![10, 12])]));
        assert!(b.supersedes[&IncidentKey {
            tenant: TenantId(1),
            incident: IncidentId(5)
        }]
            .is_empty());
        // a resent alert replaces itself: still two alerts, two rows
        let c = s
            .absorb(batch(vec![ev(1, Some(5), 12, 50, 9)]), Some(&l))
            .unwrap();
        assert_eq!(threats(&c), BTreeMap::from([((1, 5), vec![10, 12])]));
        assert_eq!(c.evidence.len(), 2);
        assert_eq!(s.held, 3);
    }

    #[test]
    fn loose_alerts_join_and_merge_threats_of_earlier_batches() {
        let l = linker();
        let mut s = State::new(100);
        // two threats on two devices, an hour apart from anything else
        let a = s
            .absorb(
                batch(vec![
                    ev(7, None, 30, 0, 1),
                    ev(7, None, 20, 60, 2),
                    ev(7, None, 21, 70, 2),
                ]),
                Some(&l),
            )
            .unwrap();
        assert_eq!(
            threats(&a),
            BTreeMap::from([((7, C | 20), vec![20, 21]), ((7, C | 30), vec![30])])
        );
        // an alert on device 1 joins threat 30
        let b = s
            .absorb(batch(vec![ev(7, None, 40, 100, 1)]), Some(&l))
            .unwrap();
        assert_eq!(threats(&b), BTreeMap::from([((7, C | 30), vec![30, 40])]));
        // an alert on both devices bridges them: 20 supersedes 30
        let bridge = vec![ev(7, None, 50, 200, 1), ev(7, None, 50, 200, 2)];
        let c = s.absorb(batch(bridge), Some(&l)).unwrap();
        assert_eq!(
            threats(&c),
            BTreeMap::from([((7, C | 20), vec![20, 21, 30, 40, 50])])
        );
        let key = IncidentKey {
            tenant: TenantId(7),
            incident: IncidentId(C | 20),
        };
        assert_eq!(c.supersedes[&key], vec![C | 30]);
        // far outside the window, or in another tenant: a threat of its own
        let d = s
            .absorb(
                batch(vec![ev(7, None, 60, 100_000, 1), ev(8, None, 61, 100, 1)]),
                Some(&l),
            )
            .unwrap();
        assert_eq!(
            threats(&d),
            BTreeMap::from([((7, C | 60), vec![60]), ((8, C | 61), vec![61])])
        );
        assert_eq!(s.held, 7);
    }

    #[test]
    fn state_is_bounded_and_zero_means_each_batch_alone() {
        let l = linker();
        let mut s = State::new(3);
        for i in 0..10u64 {
            s.absorb(
                batch(vec![
                    ev(1, Some(i), 100 + i, 0, i),
                    ev(1, Some(i), 200 + i, 0, i),
                ]),
                Some(&l),
            )
            .unwrap();
            assert!(s.held <= 3, "{} alerts held", s.held);
        }
        // the least recently touched incidents went first
        let held: Vec<u64> = s.units.keys().map(|k| k.incident.0).collect();
        assert_eq!(held, [9]);
        assert_eq!(s.lru.len(), s.units.len());
        assert!(s.loose_of.is_empty() && s.loose_time.is_empty());

        let mut none = State::new(0);
        none.absorb(batch(vec![ev(1, Some(5), 10, 0, 1)]), Some(&l))
            .unwrap();
        let b = none
            .absorb(batch(vec![ev(1, Some(5), 11, 0, 1)]), Some(&l))
            .unwrap();
        assert_eq!(threats(&b), BTreeMap::from([((1, 5), vec![11])]));
        let c = none
            .absorb(batch(vec![ev(1, None, 12, 0, 1)]), Some(&l))
            .unwrap();
        assert_eq!(threats(&c), BTreeMap::from([((1, C | 12), vec![12])]));
        assert_eq!(
            (none.held, none.units.len(), none.loose_of.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn without_a_linker_a_loose_alert_is_its_own_incident() {
        let mut s = State::new(100);
        let a = s
            .absorb(
                batch(vec![ev(1, None, 10, 0, 1), ev(1, None, 11, 0, 1)]),
                None,
            )
            .unwrap();
        let corr = group_incidents(&a.evidence);
        let keys: Vec<u64> = corr.incidents.iter().map(|i| i.key.incident.0).collect();
        assert_eq!(keys, [10, 11]);
        // resent: replaced, not doubled
        let b = s.absorb(batch(vec![ev(1, None, 10, 5, 1)]), None).unwrap();
        assert_eq!(b.evidence.len(), 1);
        assert_eq!(b.evidence[0].timestamp, 5);
        assert_eq!(s.held, 2);
    }

    #[test]
    fn absorbing_does_not_depend_on_how_alerts_are_cut_into_batches() {
        // 40 loose alerts on 6 devices over a day, and 10 of 3 given incidents
        let rows: Vec<Evidence> = (0..50u64)
            .map(|i| {
                let inc = (i >= 40).then_some(i % 3);
                ev(3, inc, 1000 + i, (i as i64 * 7919) % 86_400, i % 6)
            })
            .collect();
        let l = linker();
        let whole = l.correlate(&rows).unwrap();
        let want: BTreeMap<(u64, u64), Vec<u64>> = whole
            .incidents
            .iter()
            .map(|i| {
                (
                    (i.key.tenant.0, i.key.incident.0),
                    i.alerts.iter().map(|a| a.0).collect(),
                )
            })
            .collect();
        for size in [1, 3, 7, 50] {
            let mut s = State::new(1000);
            let mut last: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
            for chunk in rows.chunks(size) {
                let a = s.absorb(batch(chunk.to_vec()), Some(&l)).unwrap();
                for retired in a.supersedes.values().flatten() {
                    last.remove(&(3, *retired));
                }
                last.extend(threats(&a));
            }
            assert_eq!(last, want, "batches of {size}");
        }
    }
}
