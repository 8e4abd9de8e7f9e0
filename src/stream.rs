//! Streaming scorer: `threatrank score` over inputs of any size with bounded memory.
//!
//! Output is the same as scoring the whole input in memory (one row per input record, in
//! input order, rejected records keeping their place), but memory stays bounded by
//! [`StreamParams::memory_rows`] evidence rows instead of growing with the input:
//!
//! 1. **Read.** Records stream through the ingest reader. Rejections go straight to the
//!    rejects CSV. Accepted evidence is kept in memory until `memory_rows` is exceeded; then
//!    the input is *partitioned*: every evidence row goes to one of `B` spill files by a hash of
//!    its incident (alerts without a given incident id by a hash of their tenant, since the
//!    linker correlates a tenant's loose alerts together). `B` is chosen from the input's size
//!    so that one partition holds about `memory_rows / 2.6` rows. An incident never spans two
//!    partitions, so scoring partitions one at a time gives the incidents whole-input scoring
//!    gives.
//! 2. **Score.** Each partition is correlated, featurized and scored (rayon inside) while the
//!    next one is read back from its spill file (so two partitions, about `memory_rows / 1.3`
//!    rows, are in memory at once), and its output lines (ascending record index, since rows
//!    were appended in input order) are spilled. With [`Explain::Top`] only the `k` first
//!    incidents of each tenant's queue (the queue's total order, [`crate::rank::queue_order`])
//!    get their exact TreeSHAP reason; the candidates are kept in a per-tenant bounded set
//!    across partitions (memory: `k` feature rows per tenant), and explained once all
//!    partitions are scored.
//! 3. **Merge.** A k-way merge of the partitions' lines and the rejected lines by record index
//!    writes the score CSV in input order, filling `top_reason` from the explained set.
//!
//! Scratch files live in a temporary folder beside the output and are removed on success and
//! on error. A single partition too big for `memory_rows` (one huge incident, or one tenant's
//! uncorrelated alerts) is scored whole: incidents are never split.

use crate::correlate::{group_incidents, Correlated};
use crate::domain::{
    AlertId, Entities, Evidence, Grade, IncidentId, IncidentKey, Severity, TenantId,
    N_ENTITY_COLUMNS,
};
use crate::ingest::{RecordResult, RecordSource, Rejection, RejectsWriter};
use crate::models::N_CLASSES;
use crate::rank::{self, Context};
use crate::report::SCORE_HEADER;
use crate::signals::Knowledge;
use crate::train::Artifact;
use crate::{correlate, ingest, train};
use rayon::prelude::*;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Errors of the streaming scorer.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// reading input
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    /// predicting
    #[error(transparent)]
    Train(#[from] train::TrainError),
    /// correlating alerts without an incident id
    #[error(transparent)]
    Correlate(#[from] correlate::CorrelateError),
    /// a scratch or output file
    #[error("{file}: {source}")]
    Io {
        /// path
        file: String,
        /// cause (an I/O, CSV or UTF-8 error, or a truncated spill file)
        #[source]
        source: crate::BoxError,
    },
    /// parameters
    #[error("invalid streaming parameter {name}: {reason}")]
    Param {
        /// parameter
        name: &'static str,
        /// why
        reason: String,
    },
}

/// Which incidents get a `top_reason` (exact TreeSHAP contributions cost far more than
/// scoring: about 0.4 ms per incident for the default model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explain {
    /// every incident (their feature rows are kept until the end: memory grows with the
    /// number of incidents)
    All,
    /// the first `k` incidents of each tenant's queue (what a hunter reads first)
    Top(usize),
    /// none: `top_reason` is empty
    Off,
}

impl std::str::FromStr for Explain {
    type Err = String;
    fn from_str(s: &str) -> Result<Explain, String> {
        match s {
            "all" => Ok(Explain::All),
            "none" | "0" => Ok(Explain::Off),
            n => n.parse::<usize>().map(Explain::Top).map_err(|_| {
                format!("expected all, none or a number of incidents per tenant, got {n:?}")
            }),
        }
    }
}

impl std::fmt::Display for Explain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Explain::All => f.write_str("all"),
            Explain::Off => f.write_str("none"),
            Explain::Top(k) => write!(f, "{k}"),
        }
    }
}

/// Streaming parameters (unchecked). See [`StreamParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamParams {
    /// Evidence rows held in memory at once before the input is partitioned. Default 400,000
    /// (about 0.5 GB with the scoring buffers).
    pub memory_rows: usize,
    /// Which incidents get a `top_reason`. Default: the first 10 of each tenant's queue.
    pub explain: Explain,
}

impl Default for StreamParams {
    fn default() -> Self {
        StreamParams {
            memory_rows: 400_000,
            explain: Explain::Top(10),
        }
    }
}

/// Checked [`StreamParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamValidParams(StreamParams);

impl StreamParams {
    /// Checks the parameters: `memory_rows` ≥ 1.
    pub fn check(&self) -> Result<StreamValidParams, StreamError> {
        if self.memory_rows == 0 {
            return Err(StreamError::Param {
                name: "memory_rows",
                reason: "must be at least 1".into(),
            });
        }
        let mut p = self.clone();
        if p.explain == Explain::Top(0) {
            p.explain = Explain::Off;
        }
        Ok(StreamValidParams(p))
    }
}

impl StreamValidParams {
    /// The parameters.
    pub fn get(&self) -> &StreamParams {
        &self.0
    }
}

/// What a streaming score run did.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOutcome {
    /// input name
    pub file: String,
    /// records read (= accepted + rejected)
    pub records: u64,
    /// records accepted
    pub accepted: u64,
    /// records rejected (all listed in the rejects CSV)
    pub rejected: u64,
    /// the first rejections, for messages
    pub first_rejections: Vec<Rejection>,
    /// incidents scored
    pub incidents: u64,
    /// incidents given a reason
    pub explained: u64,
    /// output rows written (= records)
    pub rows: u64,
    /// partitions the input was cut into (1: scored in memory)
    pub partitions: usize,
}

impl StreamOutcome {
    /// One-line ingest summary, as [`crate::ingest::IngestReport::summary`].
    pub fn summary(&self) -> String {
        format!(
            "{}: {} records read = {} accepted + {} rejected",
            self.file, self.records, self.accepted, self.rejected
        )
    }
}

/// The process's peak resident memory (`VmHWM` of `/proc/self/status`), where the OS tells
/// it (Linux); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Counts the bytes a reader hands out (to size partitions from the input's length).
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    /// Wraps `inner`; `count` grows by every byte read.
    pub fn new(inner: R, count: Arc<AtomicU64>) -> Self {
        CountingReader { inner, count }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Scores every record of `source` into the score CSV `output` (header [`SCORE_HEADER`]) and
/// the rejects CSV `rejects`. `input_bytes` is the input's total size and `bytes_read` the
/// counter of a [`CountingReader`] under `source` (both only size the partitions).
#[allow(clippy::too_many_arguments)]
pub fn score<S: RecordSource + Send>(
    artifact: &Artifact,
    source: S,
    input_bytes: u64,
    bytes_read: &AtomicU64,
    output: &Path,
    rejects: &Path,
    params: &StreamValidParams,
    kn: &Knowledge,
) -> Result<StreamOutcome, StreamError> {
    let p = params.get();
    let file = source.file_name().to_string();
    let scratch = Scratch::new(output)?;
    let mut store = Store {
        p,
        scratch: &scratch,
        input_bytes,
        bytes_read,
        rej_csv: RejectsWriter::create(rejects)?,
        rejected_lines: LineSink::Memory(Vec::new()),
        mem: Vec::new(),
        parts: None,
        fetched: 0,
        outcome: StreamOutcome {
            file,
            records: 0,
            accepted: 0,
            rejected: 0,
            first_rejections: Vec::new(),
            incidents: 0,
            explained: 0,
            rows: 0,
            partitions: 1,
        },
    };
    let mut source = source;
    let mut batch = source.next_batch(ingest::BATCH_RECORDS);
    while !batch.is_empty() {
        // The next batch is read and parsed while this one is stored.
        let (next, stored) = rayon::join(
            || source.next_batch(ingest::BATCH_RECORDS),
            || store.push(batch),
        );
        stored?;
        batch = next;
    }
    let Store {
        rej_csv,
        rejected_lines,
        mem,
        parts,
        mut outcome,
        ..
    } = store;
    rej_csv.finish()?;
    let mut explainer = Explainer::new(p.explain);
    let mut part_lines: Vec<LineSink> = Vec::new();
    match parts {
        None => {
            let mut sink = LineSink::Memory(Vec::new());
            outcome.incidents += score_part(artifact, mem, kn, &mut explainer, &mut sink)?;
            part_lines.push(sink);
        }
        Some(ps) => {
            let files = ps.finish()?;
            outcome.partitions = files.len();
            let take = |f: &PathBuf| {
                let evidence = read_evidence(f);
                let _ = std::fs::remove_file(f);
                evidence
            };
            // Partition i + 1 is read back (one thread) while partition i is scored.
            let mut next = files.first().map(take).transpose()?;
            for i in 0..files.len() {
                let evidence = next.take().unwrap_or_default();
                let mut sink = LineSink::file(&scratch.path(&format!("lines-{i}")))?;
                let (scored, read) = rayon::join(
                    || score_part(artifact, evidence, kn, &mut explainer, &mut sink),
                    || files.get(i + 1).map(take).transpose(),
                );
                outcome.incidents += scored?;
                next = read?;
                part_lines.push(sink);
            }
        }
    }
    let reasons = explainer.finish(artifact)?;
    outcome.explained = reasons.len() as u64;
    part_lines.push(rejected_lines);
    outcome.rows = merge(part_lines, &reasons, output)?;
    scratch.remove();
    Ok(outcome)
}

/// The read phase's state: where accepted evidence and rejected records go.
struct Store<'a> {
    p: &'a StreamParams,
    scratch: &'a Scratch,
    input_bytes: u64,
    bytes_read: &'a AtomicU64,
    rej_csv: RejectsWriter,
    /// Rejected records' output lines, in record order (in memory until partitioning).
    rejected_lines: LineSink,
    /// accepted evidence, until the input is partitioned
    mem: Vec<Evidence>,
    parts: Option<Partitions>,
    /// records handed out by the reader so far
    fetched: u64,
    outcome: StreamOutcome,
}

impl Store<'_> {
    /// Stores one batch: evidence in memory or in its partition (partitioning the input once
    /// memory holds more than `memory_rows`), rejections to the rejects CSV and their lines.
    fn push(&mut self, batch: Vec<RecordResult>) -> Result<(), StreamError> {
        self.fetched += batch.len() as u64;
        let p = self.p;
        for item in batch {
            self.outcome.records += 1;
            match item {
                Ok(ev) => {
                    self.outcome.accepted += 1;
                    match &mut self.parts {
                        Some(ps) => {
                            for e in ev {
                                ps.push(&e)?;
                            }
                        }
                        None => {
                            self.mem.extend(ev);
                            if self.mem.len() > p.memory_rows {
                                self.partition()?;
                            }
                        }
                    }
                }
                Err(rej) => {
                    self.outcome.rejected += 1;
                    self.rej_csv.write(&rej)?;
                    let fields = crate::report::rejected_row(rej.to_string());
                    if matches!(&self.rejected_lines, LineSink::Memory(v) if v.len() >= p.memory_rows)
                    {
                        self.rejected_lines.spill(self.scratch)?;
                    }
                    self.rejected_lines.push(&OutLine {
                        record: rej.record,
                        key: None,
                        head: format!("{},", csv_line(&fields[..10])),
                        tail: format!(",{}", csv_line(&fields[11..])),
                    })?;
                    if self.outcome.first_rejections.len() < 20 {
                        self.outcome.first_rejections.push(rej);
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves the evidence in memory to spill partitions, sized from the input's expected rows.
    fn partition(&mut self) -> Result<(), StreamError> {
        // Evidence rows expected in the whole input: records per byte read so far, times rows
        // per accepted record.
        let read = self.bytes_read.load(Ordering::Relaxed).max(1);
        let records = self.fetched as f64 * self.input_bytes.max(read) as f64 / read as f64;
        let est_rows = records * self.mem.len() as f64 / self.outcome.accepted.max(1) as f64;
        let n = ((est_rows * 2.6 / self.p.memory_rows as f64).ceil() as usize).clamp(2, 4096);
        let mut ps = Partitions::create(self.scratch, n)?;
        for e in self.mem.drain(..) {
            ps.push(&e)?;
        }
        self.mem.shrink_to_fit();
        self.rejected_lines.spill(self.scratch)?;
        self.parts = Some(ps);
        Ok(())
    }
}

/// One output row, split around `top_reason` (filled at merge time).
#[derive(Debug, Clone, PartialEq)]
struct OutLine {
    record: u64,
    /// the incident, for scored rows
    key: Option<IncidentKey>,
    /// CSV fields before `top_reason`, each followed by a comma
    head: String,
    /// CSV fields after `top_reason`, each preceded by a comma
    tail: String,
}

/// CSV-encodes fields: joined by commas, quoted when needed (as the `csv` crate does).
fn csv_line(fields: &[String]) -> String {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = w.write_record(fields);
    let mut v = w.into_inner().unwrap_or_default();
    v.pop();
    String::from_utf8(v).unwrap_or_default()
}

/// Scores one partition: its output lines go to `sink` (ascending record), its queue heads to
/// `explainer`. Returns the incidents scored.
fn score_part(
    artifact: &Artifact,
    evidence: Vec<Evidence>,
    kn: &Knowledge,
    explainer: &mut Explainer,
    sink: &mut LineSink,
) -> Result<u64, StreamError> {
    if evidence.is_empty() {
        return Ok(0);
    }
    let corr: Correlated = match &artifact.correlation {
        Some(linker) if evidence.iter().any(|e| !e.incident_given) => {
            linker.correlate(&evidence)?
        }
        _ => group_incidents(&evidence),
    };
    let which: Vec<usize> = (0..corr.incidents.len()).collect();
    let pred = artifact.predict(&evidence, &corr, &which, kn)?;
    let n = which.len();
    let probs: Vec<[f32; 3]> = pred
        .probs
        .chunks_exact(N_CLASSES)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    // Queue heads of this partition go to the explainer (with their context).
    explainer.offer(&evidence, &corr, &pred.x, &probs, kn);
    // Per incident: the fields of its rows.
    let per_incident: Vec<(String, String)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let p = probs[i];
            let grade = Grade::from_class_id(pred.grades[i]).unwrap_or(Grade::TruePositive);
            let set = pred.sets[i];
            (
                format!(
                    "{},{:.6},{:.6},{:.6},{},scored,",
                    grade.name(),
                    p[0],
                    p[1],
                    p[2],
                    rank::priority(p[0])
                ),
                format!(
                    ",,{},{}",
                    set,
                    if set.is_uncertain() {
                        "uncertain"
                    } else {
                        "confident"
                    }
                ),
            )
        })
        .collect();
    let mut last_record: Option<u64> = None;
    for (row, e) in evidence.iter().enumerate() {
        // One output line per record: its first evidence row.
        if last_record == Some(e.record) {
            continue;
        }
        last_record = Some(e.record);
        let inc = corr.incident_of[row] as usize;
        let key = corr.incidents[inc].key;
        let (mid, tail) = &per_incident[inc];
        sink.push(&OutLine {
            record: e.record,
            key: Some(key),
            head: format!("{},{},{},{},{}", e.id, e.tenant, key.incident, e.alert, mid),
            tail: tail.clone(),
        })?;
    }
    Ok(n as u64)
}

/// A candidate for an explanation: one incident with what its reason text needs.
struct Candidate {
    priority: u8,
    p_tp: f32,
    key: IncidentKey,
    x: Vec<f32>,
    ctx: Context,
}

impl Candidate {
    /// Queue order ([`rank::queue_order`]): `Less` = earlier in the queue.
    fn queue_cmp(&self, other: &Candidate) -> std::cmp::Ordering {
        other
            .priority
            .cmp(&self.priority)
            .then(other.p_tp.total_cmp(&self.p_tp))
            .then(self.key.cmp(&other.key))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.queue_cmp(other).is_eq()
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// Max-heap top = the candidate latest in queue order (the first to evict).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.queue_cmp(other)
    }
}

/// Keeps, per tenant, the incidents to explain.
struct Explainer {
    mode: Explain,
    heads: BTreeMap<TenantId, BinaryHeap<Candidate>>,
    /// [`Explain::All`]: every candidate
    all: Vec<Candidate>,
}

impl Explainer {
    fn new(mode: Explain) -> Self {
        Explainer {
            mode,
            heads: BTreeMap::new(),
            all: Vec::new(),
        }
    }

    fn offer(
        &mut self,
        evidence: &[Evidence],
        corr: &Correlated,
        x: &crate::matrix::FeatureMatrix,
        probs: &[[f32; 3]],
        kn: &Knowledge,
    ) {
        let k = match self.mode {
            Explain::Off => return,
            Explain::All => usize::MAX,
            Explain::Top(k) => k,
        };
        // Local queue heads first: only they can enter the global ones.
        let mut by_tenant: BTreeMap<TenantId, Vec<usize>> = BTreeMap::new();
        for (i, inc) in corr.incidents.iter().enumerate() {
            by_tenant.entry(inc.key.tenant).or_default().push(i);
        }
        let order = |a: &usize, b: &usize| {
            rank::priority(probs[*b][0])
                .cmp(&rank::priority(probs[*a][0]))
                .then(probs[*b][0].total_cmp(&probs[*a][0]))
                .then(corr.incidents[*a].key.cmp(&corr.incidents[*b].key))
        };
        for (tenant, mut idx) in by_tenant {
            if idx.len() > k {
                idx.select_nth_unstable_by(k, order);
                idx.truncate(k);
            }
            for i in idx {
                let c = Candidate {
                    priority: rank::priority(probs[i][0]),
                    p_tp: probs[i][0],
                    key: corr.incidents[i].key,
                    x: x.row(i).to_vec(),
                    ctx: rank::incident_context(&corr.incidents[i].rows(evidence), kn).0,
                };
                if self.mode == Explain::All {
                    self.all.push(c);
                    continue;
                }
                let heap = self.heads.entry(tenant).or_default();
                if heap.len() < k {
                    heap.push(c);
                } else if heap.peek().is_some_and(|worst| c.queue_cmp(worst).is_lt()) {
                    heap.pop();
                    heap.push(c);
                }
            }
        }
    }

    /// Exact TreeSHAP reasons of the kept incidents: incident → reason text.
    fn finish(self, artifact: &Artifact) -> Result<BTreeMap<IncidentKey, String>, StreamError> {
        let mut cands: Vec<Candidate> = self.all;
        for (_, h) in self.heads {
            cands.extend(h.into_vec());
        }
        let mut out = BTreeMap::new();
        if cands.is_empty() {
            return Ok(out);
        }
        let width = cands[0].x.len();
        // Bounded batches keep the contribution buffer small.
        for chunk in cands.chunks(4096) {
            let data: Vec<f32> = chunk.iter().flat_map(|c| c.x.iter().copied()).collect();
            let x = crate::matrix::FeatureMatrix::from_vec(chunk.len(), width, data)
                .map_err(train::TrainError::from)?;
            let contrib = artifact.tp_contributions(&x)?;
            for (r, c) in chunk.iter().enumerate() {
                let cr = &contrib[r * (width + 1)..r * (width + 1) + width];
                let reasons = rank::top_reasons(cr, x.row(r), &artifact.schema, &c.ctx, 1);
                out.insert(
                    c.key,
                    reasons
                        .into_iter()
                        .next()
                        .map(|r| r.text)
                        .unwrap_or_default(),
                );
            }
        }
        Ok(out)
    }
}

/// Writes the score CSV: header, then the k-way merge of `sinks` by record index.
fn merge(
    sinks: Vec<LineSink>,
    reasons: &BTreeMap<IncidentKey, String>,
    output: &Path,
) -> Result<u64, StreamError> {
    let err = io_err(output);
    let f = File::create(output).map_err(|e| err(e.into()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    w.write_all(csv_line(&SCORE_HEADER.map(String::from)).as_bytes())
        .and_then(|_| w.write_all(b"\n"))
        .map_err(|e| err(e.into()))?;
    let mut sources: Vec<LineSource> = sinks
        .into_iter()
        .map(LineSink::into_source)
        .collect::<Result<_, _>>()?;
    let mut heap: BinaryHeap<std::cmp::Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut current: Vec<Option<OutLine>> = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter_mut().enumerate() {
        let l = s.next()?;
        if let Some(l) = &l {
            heap.push(std::cmp::Reverse((l.record, i)));
        }
        current.push(l);
    }
    let mut rows = 0u64;
    let mut reason_field = String::new();
    while let Some(std::cmp::Reverse((_, i))) = heap.pop() {
        let Some(l) = current[i].take() else { continue };
        reason_field.clear();
        if let Some(r) = l.key.and_then(|k| reasons.get(&k)) {
            if !r.is_empty() {
                reason_field = csv_line(std::slice::from_ref(r));
            }
        }
        w.write_all(l.head.as_bytes())
            .and_then(|_| w.write_all(reason_field.as_bytes()))
            .and_then(|_| w.write_all(l.tail.as_bytes()))
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| err(e.into()))?;
        rows += 1;
        let next = sources[i].next()?;
        if let Some(n) = &next {
            heap.push(std::cmp::Reverse((n.record, i)));
        }
        current[i] = next;
    }
    w.flush().map_err(|e| err(e.into()))?;
    Ok(rows)
}

fn io_err(path: &Path) -> impl Fn(crate::BoxError) -> StreamError + '_ {
    move |source| StreamError::Io {
        file: path.display().to_string(),
        source,
    }
}

/// The temporary folder of one run (removed on drop).
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(output: &Path) -> Result<Scratch, StreamError> {
        let name = output
            .file_name()
            .map_or_else(|| "score".into(), |n| n.to_string_lossy().into_owned());
        let parent = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = parent.join(format!(".{name}.parts-{}", std::process::id()));
        Ok(Scratch { dir })
    }

    /// A file in the folder (created on first use).
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ensure(&self) -> Result<(), StreamError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir)(e.into()))
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Output lines of one partition (or of the rejected records): in memory or spilled.
enum LineSink {
    Memory(Vec<OutLine>),
    File(SpillWriter),
}

impl LineSink {
    fn file(path: &Path) -> Result<LineSink, StreamError> {
        Ok(LineSink::File(SpillWriter::create(path)?))
    }

    fn push(&mut self, l: &OutLine) -> Result<(), StreamError> {
        match self {
            LineSink::Memory(v) => {
                v.push(l.clone());
                Ok(())
            }
            LineSink::File(w) => {
                w.u64(l.record);
                match l.key {
                    Some(k) => {
                        w.u8(1);
                        w.u64(k.tenant.0);
                        w.u64(k.incident.0);
                    }
                    None => w.u8(0),
                }
                w.str(&l.head);
                w.str(&l.tail);
                w.flush_if_full()
            }
        }
    }

    /// The same lines in the scratch file of the rejected records (no-op once spilled).
    fn spill(&mut self, scratch: &Scratch) -> Result<(), StreamError> {
        if let LineSink::Memory(lines) = self {
            scratch.ensure()?;
            let mut sink = LineSink::file(&scratch.path("rejected"))?;
            for l in lines.iter() {
                sink.push(l)?;
            }
            *self = sink;
        }
        Ok(())
    }

    fn into_source(self) -> Result<LineSource, StreamError> {
        Ok(match self {
            LineSink::Memory(v) => LineSource::Memory(v.into_iter()),
            LineSink::File(w) => LineSource::File(SpillReader::open(&w.finish()?)?),
        })
    }
}

enum LineSource {
    Memory(std::vec::IntoIter<OutLine>),
    File(SpillReader),
}

impl LineSource {
    fn next(&mut self) -> Result<Option<OutLine>, StreamError> {
        match self {
            LineSource::Memory(it) => Ok(it.next()),
            LineSource::File(r) => {
                let Some(record) = r.u64_or_eof()? else {
                    return Ok(None);
                };
                let key = if r.u8()? == 1 {
                    Some(IncidentKey {
                        tenant: TenantId(r.u64()?),
                        incident: IncidentId(r.u64()?),
                    })
                } else {
                    None
                };
                Ok(Some(OutLine {
                    record,
                    key,
                    head: r.string()?,
                    tail: r.string()?,
                }))
            }
        }
    }
}

/// The partition files of pass 1.
struct Partitions {
    writers: Vec<SpillWriter>,
}

impl Partitions {
    fn create(scratch: &Scratch, n: usize) -> Result<Self, StreamError> {
        scratch.ensure()?;
        let writers = (0..n)
            .map(|i| SpillWriter::create(&scratch.path(&format!("part-{i}"))))
            .collect::<Result<_, _>>()?;
        Ok(Partitions { writers })
    }

    fn push(&mut self, e: &Evidence) -> Result<(), StreamError> {
        let h = if e.incident_given {
            crate::rng::mix64(e.tenant.0 ^ crate::rng::mix64(e.incident.0))
        } else {
            crate::rng::mix64(e.tenant.0)
        };
        let n = self.writers.len() as u64;
        let w = &mut self.writers[(h % n) as usize];
        encode_evidence(w, e);
        w.flush_if_full()
    }

    fn finish(self) -> Result<Vec<PathBuf>, StreamError> {
        self.writers.into_iter().map(SpillWriter::finish).collect()
    }
}

/// A length-prefixed binary spill file (native endianness: written and read by one process).
struct SpillWriter {
    path: PathBuf,
    file: BufWriter<File>,
    buf: Vec<u8>,
}

impl SpillWriter {
    fn create(path: &Path) -> Result<Self, StreamError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir)(e.into()))?;
        }
        let f = File::create(path).map_err(|e| io_err(path)(e.into()))?;
        Ok(SpillWriter {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(1 << 16, f),
            buf: Vec::with_capacity(1 << 16),
        })
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_ne_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_ne_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: &Option<String>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
    fn flush_if_full(&mut self) -> Result<(), StreamError> {
        if self.buf.len() >= 1 << 15 {
            self.file
                .write_all(&self.buf)
                .map_err(|e| io_err(&self.path)(e.into()))?;
            self.buf.clear();
        }
        Ok(())
    }
    fn finish(mut self) -> Result<PathBuf, StreamError> {
        self.file
            .write_all(&self.buf)
            .and_then(|_| self.file.flush())
            .map_err(|e| io_err(&self.path)(e.into()))?;
        Ok(self.path)
    }
}

struct SpillReader {
    path: PathBuf,
    r: BufReader<File>,
}

impl SpillReader {
    fn open(path: &Path) -> Result<Self, StreamError> {
        let f = File::open(path).map_err(|e| io_err(path)(e.into()))?;
        Ok(SpillReader {
            path: path.to_path_buf(),
            r: BufReader::with_capacity(1 << 16, f),
        })
    }
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], StreamError> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| io_err(&self.path)(e.into()))?;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, StreamError> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, StreamError> {
        Ok(u32::from_ne_bytes(self.bytes()?))
    }
    /// The next u64, or `None` at a clean end of file.
    fn u64_or_eof(&mut self) -> Result<Option<u64>, StreamError> {
        let mut b = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            match self.r.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(io_err(&self.path)("truncated spill file".into()));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&self.path)(e.into())),
            }
        }
        Ok(Some(u64::from_ne_bytes(b)))
    }
    fn u64(&mut self) -> Result<u64, StreamError> {
        Ok(u64::from_ne_bytes(self.bytes()?))
    }
    fn string(&mut self) -> Result<String, StreamError> {
        let n = self.u32()? as usize;
        let mut v = vec![0u8; n];
        self.r
            .read_exact(&mut v)
            .map_err(|e| io_err(&self.path)(e.into()))?;
        String::from_utf8(v).map_err(|e| io_err(&self.path)(e.into()))
    }
    fn opt_string(&mut self) -> Result<Option<String>, StreamError> {
        Ok(if self.u8()? == 1 {
            Some(self.string()?)
        } else {
            None
        })
    }
}

const SEVERITIES: [Severity; 5] = [
    Severity::Informational,
    Severity::Low,
    Severity::Medium,
    Severity::High,
    Severity::Critical,
];

fn encode_evidence(w: &mut SpillWriter, e: &Evidence) {
    w.u64(e.record);
    w.u64(e.id);
    w.u64(e.tenant.0);
    w.u64(e.incident.0);
    w.u8(e.incident_given as u8);
    w.u64(e.alert.0);
    w.u64(e.timestamp as u64);
    w.str(&e.detector);
    w.str(&e.title);
    w.str(&e.category);
    w.u32(e.techniques.len() as u32);
    for t in &e.techniques {
        w.str(t);
    }
    w.u8(e.grade.map_or(0, |g| g.class_id() + 1));
    w.str(&e.entity_type);
    w.u8(e.impacted as u8);
    let mut mask = 0u32;
    for (j, c) in e.entities.codes.iter().enumerate() {
        if c.is_some() {
            mask |= 1 << j;
        }
    }
    w.u32(mask);
    for c in e.entities.codes.iter().flatten() {
        w.u64(*c);
    }
    w.opt_str(&e.suspicion_level);
    w.opt_str(&e.last_verdict);
    w.opt_str(&e.threat_family);
    w.opt_str(&e.antispam_direction);
    w.opt_str(&e.roles);
    w.u8(e
        .severity
        .and_then(|s| SEVERITIES.iter().position(|x| *x == s))
        .map_or(0, |i| i as u8 + 1));
}

fn decode_evidence(r: &mut SpillReader, record: u64) -> Result<Evidence, StreamError> {
    let id = r.u64()?;
    let tenant = TenantId(r.u64()?);
    let incident = IncidentId(r.u64()?);
    let incident_given = r.u8()? == 1;
    let alert = AlertId(r.u64()?);
    let timestamp = r.u64()? as i64;
    let detector = r.string()?;
    let title = r.string()?;
    let category = r.string()?;
    let n = r.u32()? as usize;
    let mut techniques = Vec::with_capacity(n);
    for _ in 0..n {
        techniques.push(r.string()?);
    }
    let grade = match r.u8()? {
        0 => None,
        g => Grade::from_class_id(g - 1),
    };
    let entity_type = r.string()?;
    let impacted = r.u8()? == 1;
    let mask = r.u32()?;
    let mut codes = [None; N_ENTITY_COLUMNS];
    for (j, c) in codes.iter_mut().enumerate() {
        if mask & (1 << j) != 0 {
            *c = Some(r.u64()?);
        }
    }
    Ok(Evidence {
        record,
        id,
        tenant,
        incident,
        incident_given,
        alert,
        timestamp,
        detector,
        title,
        category,
        techniques,
        grade,
        entity_type,
        impacted,
        entities: Entities { codes },
        suspicion_level: r.opt_string()?,
        last_verdict: r.opt_string()?,
        threat_family: r.opt_string()?,
        antispam_direction: r.opt_string()?,
        roles: r.opt_string()?,
        severity: match r.u8()? {
            0 => None,
            s => SEVERITIES.get(s as usize - 1).copied(),
        },
    })
}

/// Reads a partition file back (input order).
fn read_evidence(path: &Path) -> Result<Vec<Evidence>, StreamError> {
    let mut r = SpillReader::open(path)?;
    let mut out = Vec::new();
    while let Some(record) = r.u64_or_eof()? {
        out.push(decode_evidence(&mut r, record)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_round_trips_through_a_spill_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e");
        let mut codes = [None; N_ENTITY_COLUMNS];
        codes[0] = Some(7);
        codes[21] = Some(u64::MAX);
        let full = Evidence {
            // past u32::MAX: a 32-bit record index would wrap here and misalign the output
            record: u64::from(u32::MAX) + 9,
            id: 1,
            tenant: TenantId(2),
            incident: IncidentId(3),
            incident_given: false,
            alert: AlertId(4),
            timestamp: -5,
            detector: "d".into(),
            title: "tï".into(),
            category: "c".into(),
            techniques: vec!["T1".into(), "T2.001".into()],
            grade: Some(Grade::FalsePositive),
            entity_type: "Ip".into(),
            impacted: true,
            entities: Entities { codes },
            suspicion_level: Some("s".into()),
            last_verdict: None,
            threat_family: Some(String::new()),
            antispam_direction: None,
            roles: Some("r".into()),
            severity: Some(Severity::Critical),
        };
        let mut w = SpillWriter::create(&p).unwrap();
        encode_evidence(&mut w, &full);
        encode_evidence(&mut w, &Evidence::default());
        w.finish().unwrap();
        assert_eq!(read_evidence(&p).unwrap(), vec![full, Evidence::default()]);
    }

    #[test]
    fn output_lines_past_four_billion_records_keep_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let line = |record| OutLine {
            record,
            key: Some(IncidentKey {
                tenant: TenantId(1),
                incident: IncidentId(2),
            }),
            head: "h,".into(),
            tail: ",t".into(),
        };
        let lines = [
            line(u64::from(u32::MAX)),
            line(u64::from(u32::MAX) + 1),
            line(1 << 40),
        ];
        let mut sink = LineSink::file(&dir.path().join("lines")).unwrap();
        for l in &lines {
            sink.push(l).unwrap();
        }
        let mut source = sink.into_source().unwrap();
        for l in &lines {
            assert_eq!(source.next().unwrap().as_ref(), Some(l));
        }
        assert_eq!(source.next().unwrap(), None);
    }

    /// Linux only (elsewhere `peak_rss_bytes` is `None` by design: nothing to test). The peak
    /// is measured, and it is at least the 64 MiB this test holds touched.
    #[cfg(target_os = "linux")]
    #[test]
    fn peak_rss_is_read_on_linux() {
        let held = vec![1u8; 64 << 20];
        let peak = peak_rss_bytes().expect("VmHWM read from /proc/self/status");
        assert!(peak >= 64 << 20, "{peak} bytes");
        assert_eq!(held.iter().map(|&b| u64::from(b)).sum::<u64>(), 64 << 20);
    }

    #[test]
    fn explain_parses_and_checks() {
        assert_eq!("all".parse::<Explain>(), Ok(Explain::All));
        assert_eq!("none".parse::<Explain>(), Ok(Explain::Off));
        assert_eq!("25".parse::<Explain>(), Ok(Explain::Top(25)));
        assert!("x".parse::<Explain>().is_err());
        let p = StreamParams {
            memory_rows: 0,
            ..Default::default()
        };
        assert!(p.check().is_err());
        let p = StreamParams {
            explain: Explain::Top(0),
            ..Default::default()
        };
        assert_eq!(p.check().unwrap().get().explain, Explain::Off);
    }

    #[test]
    fn csv_line_quotes_like_the_csv_crate() {
        assert_eq!(
            csv_line(&["a".into(), "b,c".into(), "".into()]),
            "a,\"b,c\","
        );
        assert_eq!(csv_line(&["say \"hi\"".into()]), "\"say \"\"hi\"\"\"");
    }
}
