//! Synthetic GUIDE-shaped data: a [`Profile`] fitted to the marginals of a real GUIDE CSV, and
//! a streaming writer of any number of rows ([`generate`]).
//!
//! A side road of the pipeline (`ingest → correlate → …`): it reads a real GUIDE file with the
//! crate's own [`ingest`] reader and [`group_incidents`], and writes CSV that the same reader
//! accepts, for scale benchmarks (10^4 … 10^7 rows and more) and tests. **The data is
//! synthetic**: no row of the output is a real alert, ids are made up, and the only structure
//! it shares with the fit file is what is listed here.
//!
//! # What is fitted (from the fit file, default the shipped 10,000-row sample)
//!
//! - **Incidents**: each synthetic incident resamples one fit incident (uniformly) and takes its
//!   grade (TruePositive / BenignPositive / FalsePositive, or none), its *shape* (rows per
//!   alert, in time order; so rows per incident and alerts per incident are the empirical
//!   distributions, jointly with the grade) and its `Usage`. All rows of an incident carry its
//!   grade; rows with an empty grade inside graded incidents appear with the fit file's share.
//! - **Alerts** (`DetectorId`, `AlertTitle`, `Category`, `MitreTechniques`, drawn together per
//!   alert, so titles stay with their detectors): from the fit file's alerts of the incident's
//!   grade and of the same kind (one-row or multi-row alert), smoothed toward all alerts:
//!   `P(a | g, m) = (1 − λ) · P̂(a | g, m) + λ · P̂(a)` with λ = [`SynthParams::grade_smoothing`]
//!   (default 0.1). Detector, title and category therefore depend on the grade: a model trained
//!   on synthetic rows learns something.
//! - **Evidence rows** (`EntityType`, `EvidenceRole`, `OSFamily`, `OSVersion`, `CountryCode`,
//!   `State`, `City`, `Roles`, `LastVerdict`, `SuspicionLevel`, `ThreatFamily`, …, including
//!   empty cells, plus which entity columns hold the "not present" code, are empty or hold a
//!   real code): one fit row's values together, drawn from the fit rows of the same grade and
//!   alert category, smoothed toward all rows of that category with the same λ. Every column's
//!   marginal (entity-type and role mixes, placeholder shares, …) is thus the fit file's.
//! - **Entity codes** (the 20 identifying columns `DeviceId` … `ResourceIdName`): the GUIDE
//!   "not present" code of a column is its most frequent value in the fit file and is written
//!   as it is spelt there. A real code is drawn from a per-tenant pool with Zipf-like reuse
//!   (rank `k` with probability ≈ 1/((k+1)·log2(pool)): a power-of-two bucket of ranks drawn
//!   uniformly, then a rank in it; ranks rotated per tenant and column); the pool of tenant
//!   `t` holds `⌈n_t · d_c⌉` codes, `n_t` its expected rows and `d_c` the fit file's distinct
//!   codes per row of column `c` counted within tenants. Pools of different tenants never
//!   share a code. Within an incident, a row repeats the incident's previous code of that
//!   column with the fit file's within-incident repeat share. Columns that the fit file
//!   writes as decimals (`1962111205.0`, pandas style) are written so too.
//! - **Tenants**: with `T` tenants, each tenant's weight is a draw from the fit file's
//!   incidents-per-tenant counts (heavy-tailed) plus a uniform jitter in [0, 1); tenants are
//!   numbered by decreasing weight (`OrgId` 0 is the largest, as in GUIDE) and each incident
//!   picks its tenant by weight. Tenants whose weight earns no incident do not appear.
//! - **Time**: an incident starts on a day drawn from the fit file's incident start days
//!   (offsets from its first day, so the same span), at an hour drawn from its hour-of-day mix,
//!   at a uniform second within that hour; each later alert of the incident follows the
//!   previous one after a gap drawn from the fit file's gaps between consecutive alerts of an
//!   incident. Rows of one alert share its timestamp.
//!
//! # What is not fitted
//!
//! No joint structure beyond the above: the grade does not depend on the tenant (tenant
//! history carries no signal of its own), alerts of one incident are drawn independently given
//! its grade, entity codes do not depend on the detector, and the distinct-code share of a
//! column comes out below the fit file's (Zipf reuse repeats codes). `Id` is the row number,
//! `IncidentId` and `AlertId` are running counters (unique overall, so unique per tenant),
//! `OrgId` is the tenant's rank: none of them is a GUIDE id.
//!
//! # Output
//!
//! The fit file's header (same columns, same order), then one row per alert evidence. Rows of
//! one incident are interleaved with others like an alert stream: the writer keeps
//! [`SynthParams::open_incidents`] incidents open, emits the next row of a random open one and
//! replaces it when it is done; timestamps within an incident never decrease. Same params and
//! same fit file give byte-identical output. Memory is the profile plus the open incidents and
//! a few words per tenant, independent of the number of rows; rows are formatted into one
//! reused buffer without per-row allocation and written in 256 KiB chunks.
//!
//! ```no_run
//! use threatrank::synth::{generate, Profile, SynthParams};
//! let profile = Profile::fit_file(std::path::Path::new("datasets/guide/guide_sample.csv"))?;
//! let params = SynthParams::default().rows(100_000).tenants(500).seed(7).check()?;
//! let file = std::fs::File::create("synthetic.csv").expect("writable");
//! let summary = generate(&profile, &params, std::io::BufWriter::new(file))?;
//! assert_eq!(summary.rows, 100_000);
//! # Ok::<(), threatrank::synth::SynthError>(())
//! ```

use crate::correlate::group_incidents;
use crate::domain::{AlertId, Grade, ENTITY_COLUMNS};
use crate::ingest::{self, civil_from_days, parse_code, IngestError, IngestValidParams};
use crate::rng::{mix64, SplitMix64};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;

/// Number of identifying entity columns (the first 20 of [`ENTITY_COLUMNS`]; `OSFamily` and
/// `OSVersion` are categories and are resampled as they are).
pub const N_ID_COLUMNS: usize = 20;

/// Columns drawn once per alert, together.
pub const ALERT_COLUMNS: [&str; 4] = ["DetectorId", "AlertTitle", "Category", "MitreTechniques"];

/// Grade classes: TP, BP, FP, and "no grade".
const N_CLASSES: usize = 4;
const NO_GRADE: u8 = 3;
const GRADE_TEXT: [&[u8]; N_CLASSES] = [b"TruePositive", b"BenignPositive", b"FalsePositive", b""];

/// Entity-cell states in a row template.
const EMPTY: u32 = 0;
const PLACEHOLDER: u32 = 1;
const PRESENT: u32 = 2;

/// Rows are written to the output in chunks of about this many bytes.
const CHUNK: usize = 256 * 1024;
/// The progress callback is called every this many rows (a power of two).
const PROGRESS_EVERY: u64 = 1 << 16;

/// Largest accepted [`SynthParams::tenants`] (a few words of memory per tenant).
pub const MAX_TENANTS: u64 = 10_000_000;
/// Largest accepted [`SynthParams::open_incidents`].
pub const MAX_OPEN_INCIDENTS: usize = 1_000_000;

/// Errors of fitting a profile and writing synthetic rows.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A parameter is out of range.
    #[error("invalid synth parameter `{name}`: {reason}")]
    Param {
        /// parameter
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// The fit file cannot be read as GUIDE CSV at all (missing, empty, wrong header).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The fit file holds a record the GUIDE reader rejects: a profile is fitted only from a
    /// clean file. Names the first rejected record.
    #[error("{file}:{line}: {}{reason} (first of {rejected} rejected records among {records}; the fit file must be clean GUIDE CSV)", .column.as_ref().map(|c| format!("column {c}: ")).unwrap_or_default())]
    Reject {
        /// fit file
        file: String,
        /// 1-based line of the first rejected record
        line: u64,
        /// its offending column, when one is to blame
        column: Option<String>,
        /// what is wrong
        reason: String,
        /// rejected records in all
        rejected: usize,
        /// records read
        records: u64,
    },
    /// The fit file was read but a profile cannot be fitted from it.
    #[error("{file}: cannot fit a synthetic-data profile: {reason}")]
    Fit {
        /// fit file
        file: String,
        /// why
        reason: String,
    },
    /// Writing the output failed.
    #[error("{target}: cannot write synthetic rows: {source}")]
    Write {
        /// output name (`output` when [`generate`] does not know it)
        target: String,
        /// cause
        #[source]
        source: std::io::Error,
    },
}

impl SynthError {
    /// The same error naming `target` as the output (for callers that know the file).
    pub fn in_output(self, target: &Path) -> SynthError {
        match self {
            SynthError::Write { source, .. } => SynthError::Write {
                target: target.display().to_string(),
                source,
            },
            other => other,
        }
    }

    /// Whether the fit file is to blame (unreadable, rejected records, nothing to fit).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            SynthError::Ingest(_) | SynthError::Reject { .. } | SynthError::Fit { .. }
        )
    }
}

/// Generation parameters (unchecked). See [`SynthParams::check`].
///
/// ```
/// use threatrank::synth::SynthParams;
/// assert!(SynthParams::default().rows(1000).tenants(10).check().is_ok());
/// assert!(SynthParams::default().rows(0).check().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SynthParams {
    /// Rows to write (≥ 1). Default 10,000.
    pub rows: u64,
    /// Tenants to draw weights for (1 … [`MAX_TENANTS`]); at most this many appear. Default
    /// 1,000.
    pub tenants: u64,
    /// Seed of every random draw. Default 42.
    pub seed: u64,
    /// Incidents kept open at once, whose rows are interleaved (1 … [`MAX_OPEN_INCIDENTS`]).
    /// Default 4,096.
    pub open_incidents: usize,
    /// λ: weight of the unconditional distribution in the grade-conditional draws of alerts
    /// and evidence rows, in [0, 1] (0 = the fit file's conditionals as they are, 1 = no grade
    /// signal). Default 0.1.
    pub grade_smoothing: f64,
}

impl Default for SynthParams {
    fn default() -> Self {
        Self {
            rows: 10_000,
            tenants: 1_000,
            seed: 42,
            open_incidents: 4_096,
            grade_smoothing: 0.1,
        }
    }
}

impl SynthParams {
    /// Sets [`SynthParams::rows`] (default 10,000).
    pub fn rows(mut self, n: u64) -> Self {
        self.rows = n;
        self
    }
    /// Sets [`SynthParams::tenants`] (default 1,000).
    pub fn tenants(mut self, n: u64) -> Self {
        self.tenants = n;
        self
    }
    /// Sets [`SynthParams::seed`] (default 42).
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
    /// Sets [`SynthParams::open_incidents`] (default 4,096).
    pub fn open_incidents(mut self, n: usize) -> Self {
        self.open_incidents = n;
        self
    }
    /// Sets [`SynthParams::grade_smoothing`] (default 0.1).
    pub fn grade_smoothing(mut self, l: f64) -> Self {
        self.grade_smoothing = l;
        self
    }

    /// Checks every parameter; errors name the parameter.
    pub fn check(&self) -> Result<SynthValidParams, SynthError> {
        let bad = |name, reason: String| Err(SynthError::Param { name, reason });
        if self.rows == 0 {
            return bad("rows", "must be at least 1".into());
        }
        if self.tenants == 0 || self.tenants > MAX_TENANTS {
            return bad(
                "tenants",
                format!("{} is outside 1 ..= {MAX_TENANTS}", self.tenants),
            );
        }
        if self.open_incidents == 0 || self.open_incidents > MAX_OPEN_INCIDENTS {
            return bad(
                "open_incidents",
                format!(
                    "{} is outside 1 ..= {MAX_OPEN_INCIDENTS}",
                    self.open_incidents
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.grade_smoothing) {
            return bad(
                "grade_smoothing",
                format!("{} is outside [0, 1]", self.grade_smoothing),
            );
        }
        Ok(SynthValidParams(self.clone()))
    }
}

/// Checked [`SynthParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct SynthValidParams(SynthParams);

impl SynthValidParams {
    /// The checked values.
    pub fn get(&self) -> &SynthParams {
        &self.0
    }
}

/// What a fit file held (for messages and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileStats {
    /// data rows
    pub rows: u64,
    /// incidents (distinct `(OrgId, IncidentId)`)
    pub incidents: u64,
    /// alerts (distinct alerts within incidents)
    pub alerts: u64,
    /// tenants
    pub tenants: u64,
    /// incidents graded TP, BP, FP, and without a grade
    pub incident_grades: [u64; 4],
}

impl ProfileStats {
    /// Mean rows per incident.
    pub fn mean_incident_rows(&self) -> f64 {
        self.rows as f64 / self.incidents.max(1) as f64
    }
}

/// Counts of one [`generate`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthSummary {
    /// data rows written
    pub rows: u64,
    /// incidents started (all finished: every started incident is written out)
    pub incidents: u64,
    /// alerts
    pub alerts: u64,
    /// distinct tenants that received at least one incident (≤ `tenants`)
    pub tenants: u64,
    /// bytes written, header included
    pub bytes: u64,
}

/// Walker's alias table (Vose's construction): O(1) draws from a fixed discrete distribution
/// with one 64-bit random number (high half picks the column, low half the coin).
#[derive(Debug, Clone)]
struct Alias {
    /// per column: keep it when the 32-bit coin is below this (scale 2^32), else take `other`
    keep: Vec<u64>,
    other: Vec<u32>,
}

impl Alias {
    /// `None` when there is no positive weight. Zero-weight entries are never drawn.
    fn new(weights: &[f64]) -> Option<Alias> {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        if n == 0 || n > u32::MAX as usize || !total.is_finite() || total <= 0.0 {
            return None;
        }
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut keep = vec![1.0f64; n];
        let mut other: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            keep[s] = scaled[s];
            other[s] = l as u32;
            scaled[l] = (scaled[l] + scaled[s]) - 1.0;
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Columns left over (rounding) keep themselves, except a zero weight, which must never
        // be drawn: it hands its column to the heaviest entry.
        let heaviest = (0..n).fold(0, |b, i| if weights[i] > weights[b] { i } else { b });
        for i in 0..n {
            if weights[i] <= 0.0 && other[i] as usize == i {
                keep[i] = 0.0;
                other[i] = heaviest as u32;
            }
        }
        let scale = (1u64 << 32) as f64;
        let keep = keep
            .iter()
            .map(|&k| (k.clamp(0.0, 1.0) * scale).round() as u64)
            .collect();
        Some(Alias { keep, other })
    }

    #[inline]
    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let r = rng.next_u64();
        let i = (((r >> 32) * self.keep.len() as u64) >> 32) as usize;
        if (r & 0xFFFF_FFFF) < self.keep[i] {
            i
        } else {
            self.other[i] as usize
        }
    }
}

/// A distribution over `u32` items (ids into some table).
#[derive(Debug, Clone)]
struct Table {
    items: Vec<u32>,
    alias: Alias,
}

impl Table {
    /// From `(item, count)` pairs in a deterministic order; `None` when empty.
    fn from_counts(counts: impl IntoIterator<Item = (u32, u64)>) -> Option<Table> {
        let (items, weights): (Vec<u32>, Vec<f64>) =
            counts.into_iter().map(|(i, c)| (i, c as f64)).unzip();
        Alias::new(&weights).map(|alias| Table { items, alias })
    }

    #[inline]
    fn sample(&self, rng: &mut SplitMix64) -> u32 {
        self.items[self.alias.sample(rng)]
    }
}

/// Interned field texts, stored CSV-escaped in one byte arena.
#[derive(Debug, Clone, Default)]
struct Strings {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
    index: BTreeMap<String, u32>,
}

impl Strings {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.spans.len() as u32;
        let start = self.bytes.len();
        push_csv_field(&mut self.bytes, s);
        self.spans.push((start, self.bytes.len()));
        self.index.insert(s.to_string(), i);
        i
    }

    #[inline]
    fn get(&self, i: u32) -> &[u8] {
        let (a, b) = self.spans[i as usize];
        &self.bytes[a..b]
    }
}

/// Appends `s` as one CSV field: quoted (quotes doubled) when it holds a separator, a quote or
/// a line break, else as it is.
fn push_csv_field(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Fixed-width keys of `u32` deduplicated: id = first-seen order (deterministic).
#[derive(Debug, Clone, Default)]
struct Dedup {
    map: BTreeMap<Vec<u32>, u32>,
    flat: Vec<u32>,
}

impl Dedup {
    /// The id of `key` and whether it is new.
    fn id(&mut self, key: &[u32]) -> (u32, bool) {
        if let Some(&i) = self.map.get(key) {
            return (i, false);
        }
        let i = self.map.len() as u32;
        self.map.insert(key.to_vec(), i);
        self.flat.extend_from_slice(key);
        (i, true)
    }
}

/// What one output column is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Id,
    Org,
    Incident,
    Alert,
    Time,
    Grade,
    /// incident-level text (`Usage`)
    Usage,
    /// j-th alert-level column
    AlertCol(usize),
    /// j-th row-template text column
    RowCol(usize),
    /// identifying entity column e (index into [`ENTITY_COLUMNS`])
    IdCol(usize),
}

/// One step of writing a row: a single field, or a run of consecutive columns pre-rendered
/// per alert or per evidence-row template (so a GUIDE row is about ten byte copies, not 46).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Id,
    Org,
    Incident,
    Alert,
    Time,
    Grade,
    Usage,
    /// r-th run of alert columns
    AlertRun(usize),
    /// r-th run of evidence-row columns
    RowRun(usize),
}

/// Marks a [`Piece`] that is not followed by a code.
const NO_CODE: u8 = u8::MAX;

/// Pre-rendered text of a row template, then (unless `code` is [`NO_CODE`]) a real code of
/// identifying column `code`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: u32,
    len: u32,
    code: u8,
}

/// Groups the column plan into steps; returns the steps and the columns of each alert run and
/// each row run.
fn group_steps(plan: &[Op]) -> (Vec<Step>, Vec<Vec<Op>>, Vec<Vec<Op>>) {
    let (mut steps, mut alert_runs, mut row_runs) =
        (Vec::new(), Vec::<Vec<Op>>::new(), Vec::<Vec<Op>>::new());
    let mut prev: Option<Step> = None;
    for &op in plan {
        let step = match op {
            Op::Id => Step::Id,
            Op::Org => Step::Org,
            Op::Incident => Step::Incident,
            Op::Alert => Step::Alert,
            Op::Time => Step::Time,
            Op::Grade => Step::Grade,
            Op::Usage => Step::Usage,
            Op::AlertCol(_) => match prev {
                Some(Step::AlertRun(r)) => {
                    alert_runs[r].push(op);
                    continue;
                }
                _ => {
                    alert_runs.push(vec![op]);
                    Step::AlertRun(alert_runs.len() - 1)
                }
            },
            Op::RowCol(_) | Op::IdCol(_) => match prev {
                Some(Step::RowRun(r)) => {
                    row_runs[r].push(op);
                    continue;
                }
                _ => {
                    row_runs.push(vec![op]);
                    Step::RowRun(row_runs.len() - 1)
                }
            },
        };
        steps.push(step);
        prev = Some(step);
    }
    (steps, alert_runs, row_runs)
}

/// One identifying entity column of the profile.
#[derive(Debug, Clone, Default)]
struct IdColumn {
    /// the "not present" code (most frequent value; `None` when empty cells are)
    placeholder: Option<u64>,
    /// its text as spelt in the fit file
    placeholder_text: Option<u32>,
    /// real codes are written with a `.0` suffix (most of the fit file's were)
    decimal: bool,
    /// distinct codes per row, counted within tenants (pool size per expected tenant row)
    pool_rate: f64,
    /// share of a row's real code repeating its incident's previous real code of the column
    reuse: f64,
}

/// One fit incident, as resampled.
#[derive(Debug, Clone, Copy)]
struct IncidentRec {
    class: u8,
    shape: u32,
    usage: u32,
}

/// Marginals fitted from a GUIDE CSV file; see the [module docs](self) for what is fitted.
#[derive(Debug, Clone)]
pub struct Profile {
    file: String,
    header: Vec<String>,
    steps: Vec<Step>,
    strings: Strings,
    /// pre-rendered alert runs: `alert_spans[tuple * n_alert_runs + run]` into `alert_text`
    alert_text: Vec<u8>,
    alert_spans: Vec<(usize, usize)>,
    n_alert_runs: usize,
    /// pre-rendered row runs: `row_runs[template * n_row_runs + run]` = (first piece, pieces)
    row_text: Vec<u8>,
    row_pieces: Vec<Piece>,
    row_runs: Vec<(u32, u32)>,
    n_row_runs: usize,
    millis: bool,
    stats: ProfileStats,
    // incidents
    incidents: Vec<IncidentRec>,
    shape_spans: Vec<(u32, u32)>,
    shape_rows: Vec<u32>,
    gaps: Option<Table>,
    gap_values: Vec<i64>,
    first_day: i64,
    days: Table,
    hours: Alias,
    blank_row_share: f64,
    // alerts
    tuple_cat: Vec<u32>,
    /// by `class * 2 + multi`
    tuples_cell: Vec<Option<Table>>,
    tuples_class: Vec<Option<Table>>,
    tuples_all: Table,
    // evidence rows
    n_cat: usize,
    /// by `class * n_cat + category`
    tpl_cell: Vec<Option<Table>>,
    tpl_cat: Vec<Table>,
    ids: Vec<IdColumn>,
    // tenants
    tenant_sizes: Vec<u32>,
}

fn class_of(g: Option<Grade>) -> u8 {
    g.map_or(NO_GRADE, Grade::class_id)
}

impl Profile {
    /// Fits a profile from a GUIDE CSV file (read twice, streaming: once by the crate's GUIDE
    /// reader, once for the raw field texts). Every record must be accepted by the reader:
    /// the first rejected one is a [`SynthError::Reject`] naming file, line and column.
    pub fn fit_file(path: &Path) -> Result<Profile, SynthError> {
        let name = path.display().to_string();
        let open = || {
            std::fs::File::open(path)
                .map(|f| std::io::BufReader::with_capacity(1 << 16, f))
                .map_err(|source| IngestError::Io {
                    file: name.clone(),
                    source,
                })
        };
        Self::fit_from(&name, open()?, open()?)
    }

    /// Fits a profile from GUIDE CSV bytes named `name` in messages.
    pub fn fit_bytes(bytes: &[u8], name: &str) -> Result<Profile, SynthError> {
        Self::fit_from(name, bytes, bytes)
    }

    /// The output header: the fit file's columns, in its order.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// What the fit file held.
    pub fn stats(&self) -> &ProfileStats {
        &self.stats
    }

    /// The fit file's name.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The "not present" code of an identifying entity column (e.g. `DeviceId`), as spelt in
    /// the fit file; `None` for other columns or when empty cells are the most frequent value.
    pub fn placeholder(&self, column: &str) -> Option<&str> {
        let e = ENTITY_COLUMNS[..N_ID_COLUMNS]
            .iter()
            .position(|c| *c == column)?;
        let t = self.ids[e].placeholder_text?;
        std::str::from_utf8(self.strings.get(t)).ok()
    }

    fn fit_from<R1: Read + Send, R2: Read>(
        name: &str,
        first: R1,
        second: R2,
    ) -> Result<Profile, SynthError> {
        let fit_err = |reason: String| SynthError::Fit {
            file: name.to_string(),
            reason,
        };
        let ing = ingest::read_from(
            first,
            name,
            ingest::InputFormat::GuideCsv,
            &IngestValidParams::default(),
        )?;
        if let Some(r) = ing.report.rejected.first() {
            return Err(SynthError::Reject {
                file: r.file.clone(),
                line: r.line,
                column: r.column.clone(),
                reason: r.reason.clone(),
                rejected: ing.report.rejected.len(),
                records: ing.report.records,
            });
        }
        let ev = &ing.evidence;
        if ev.is_empty() {
            return Err(fit_err("no data rows".into()));
        }
        if ev.len() > u32::MAX as usize {
            return Err(fit_err(format!("{} rows exceed 2^32 - 1", ev.len())));
        }
        let corr = group_incidents(ev);
        let inc_class: Vec<u8> = corr.incidents.iter().map(|i| class_of(i.grade)).collect();

        // "Not present" codes: the most frequent value of each identifying column (ties → the
        // smallest; an empty cell counts as a value and sorts first).
        let mut ids: Vec<IdColumn> = vec![IdColumn::default(); N_ID_COLUMNS];
        for (e, id) in ids.iter_mut().enumerate() {
            let mut counts: BTreeMap<Option<u64>, u64> = BTreeMap::new();
            for x in ev {
                *counts.entry(x.entities.codes[e]).or_default() += 1;
            }
            let mut best = (None, 0u64);
            for (v, c) in counts {
                if c > best.1 {
                    best = (v, c);
                }
            }
            id.placeholder = best.0;
        }

        // Raw pass: the texts of every column that is resampled as text.
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(second);
        let mut rec = csv::ByteRecord::new();
        let header_err = |e: &dyn std::fmt::Display| fit_err(format!("header: {e}"));
        if !rdr.read_byte_record(&mut rec).map_err(|e| header_err(&e))? {
            return Err(fit_err("no header".into()));
        }
        let mut header = Vec::with_capacity(rec.len());
        for (i, f) in rec.iter().enumerate() {
            let f = if i == 0 {
                f.strip_prefix(b"\xef\xbb\xbf").unwrap_or(f)
            } else {
                f
            };
            let s = std::str::from_utf8(f).map_err(|e| header_err(&e))?;
            header.push(s.trim().to_string());
        }
        let mut plan = Vec::with_capacity(header.len());
        let (mut n_alert, mut n_row, mut cat_j) = (0usize, 0usize, None);
        for h in &header {
            let op = match h.as_str() {
                "Id" => Op::Id,
                "OrgId" => Op::Org,
                "IncidentId" => Op::Incident,
                "AlertId" => Op::Alert,
                "Timestamp" => Op::Time,
                "IncidentGrade" => Op::Grade,
                "Usage" => Op::Usage,
                a if ALERT_COLUMNS.contains(&a) => {
                    if a == "Category" {
                        cat_j = Some(n_alert);
                    }
                    n_alert += 1;
                    Op::AlertCol(n_alert - 1)
                }
                e if ENTITY_COLUMNS[..N_ID_COLUMNS].contains(&e) => Op::IdCol(
                    ENTITY_COLUMNS
                        .iter()
                        .position(|c| c == &e)
                        .unwrap_or_default(),
                ),
                _ => {
                    n_row += 1;
                    Op::RowCol(n_row - 1)
                }
            };
            plan.push(op);
        }
        // The GUIDE reader required Category; this is only a guard.
        let cat_j = cat_j.ok_or_else(|| fit_err("no Category column".into()))?;

        let mut strings = Strings::default();
        let mut tuples = Dedup::default();
        let mut templates = Dedup::default();
        let mut cats: BTreeMap<u32, u32> = BTreeMap::new();
        let mut tuple_cat: Vec<u32> = Vec::new();
        let mut row_tuple = vec![0u32; ev.len()];
        let mut row_tpl = vec![0u32; ev.len()];
        let mut row_usage = vec![u32::MAX; ev.len()];
        let mut present = [0u64; N_ID_COLUMNS];
        let mut dotted = [0u64; N_ID_COLUMNS];
        let mut alert_key = vec![0u32; n_alert];
        let mut tpl_key = vec![EMPTY; n_row + N_ID_COLUMNS];
        let mut millis = 0u64;
        let mut i = 0usize;
        loop {
            let got = rdr
                .read_byte_record(&mut rec)
                .map_err(|e| fit_err(format!("raw CSV pass: {e}")))?;
            if !got {
                break;
            }
            if rec.len() == 1 && rec.get(0).is_some_and(<[u8]>::is_empty) {
                continue;
            }
            let line = rec.position().map_or(0, |p| p.line());
            let disagree = |what: &str| {
                fit_err(format!(
                    "raw CSV pass disagrees with the GUIDE reader near line {line}: {what}"
                ))
            };
            let x = ev.get(i).ok_or_else(|| disagree("more records"))?;
            if rec.len() != header.len() || x.record as usize != i {
                return Err(disagree("record layout"));
            }
            let field = |c: usize| {
                rec.get(c)
                    .and_then(|f| std::str::from_utf8(f).ok())
                    .unwrap_or("")
                    .trim()
            };
            tpl_key[n_row..].fill(EMPTY);
            for (c, op) in plan.iter().enumerate() {
                match *op {
                    Op::Id if parse_code(field(c)) != Some(x.id) => {
                        return Err(disagree("Id"));
                    }
                    Op::Time if field(c).contains('.') => millis += 1,
                    Op::Usage => row_usage[i] = strings.intern(field(c)),
                    Op::AlertCol(j) => alert_key[j] = strings.intern(field(c)),
                    Op::RowCol(j) => tpl_key[j] = strings.intern(field(c)),
                    Op::IdCol(e) => {
                        let id = &mut ids[e];
                        tpl_key[n_row + e] = match x.entities.codes[e] {
                            None => EMPTY,
                            Some(v) if Some(v) == id.placeholder => {
                                if id.placeholder_text.is_none() {
                                    id.placeholder_text = Some(strings.intern(field(c)));
                                }
                                PLACEHOLDER
                            }
                            Some(_) => {
                                present[e] += 1;
                                dotted[e] += u64::from(field(c).contains('.'));
                                PRESENT
                            }
                        };
                    }
                    _ => {}
                }
            }
            let (t, new) = tuples.id(&alert_key);
            if new {
                let next = cats.len() as u32;
                tuple_cat.push(*cats.entry(alert_key[cat_j]).or_insert(next));
            }
            row_tuple[i] = t;
            row_tpl[i] = templates.id(&tpl_key).0;
            i += 1;
        }
        if i != ev.len() {
            return Err(fit_err(format!(
                "raw CSV pass found {i} records, the GUIDE reader {}",
                ev.len()
            )));
        }
        let n_cat = cats.len();

        // Per incident: shape, alert draws, evidence-row draws, time, entity reuse.
        let mut tuple_counts: BTreeMap<(u8, bool, u32), u64> = BTreeMap::new();
        let mut tpl_counts: BTreeMap<(usize, u32), u64> = BTreeMap::new();
        let mut shapes: BTreeMap<Vec<u32>, u32> = BTreeMap::new();
        let (mut shape_spans, mut shape_rows) = (Vec::new(), Vec::new());
        let mut incidents = Vec::with_capacity(corr.incidents.len());
        let mut gaps: BTreeMap<i64, u64> = BTreeMap::new();
        let mut days: BTreeMap<i64, u64> = BTreeMap::new();
        let mut hours = [0f64; 24];
        let mut reuse = [(0u64, 0u64); N_ID_COLUMNS];
        let mut distinct: BTreeSet<(u64, usize, u64)> = BTreeSet::new();
        let (mut graded_rows, mut blank_rows) = (0u64, 0u64);
        let mut incident_grades = [0u64; 4];
        let mut n_alerts = 0u64;
        let first_day = corr
            .incidents
            .iter()
            .map(|inc| inc.first_seen.div_euclid(86_400))
            .min()
            .unwrap_or(0);
        let mut rows: Vec<u32> = Vec::new();
        let mut alerts: Vec<(AlertId, u32, i64, u32)> = Vec::new();
        let mut alert_pos: BTreeMap<AlertId, usize> = BTreeMap::new();
        for (k, inc) in corr.incidents.iter().enumerate() {
            let class = inc_class[k];
            incident_grades[class as usize] += 1;
            rows.clear();
            rows.extend_from_slice(&inc.evidence);
            rows.sort_by_key(|&r| (ev[r as usize].timestamp, r));
            // Alerts in order of first appearance in time.
            alerts.clear();
            alert_pos.clear();
            for &r in &rows {
                let x = &ev[r as usize];
                match alert_pos.get(&x.alert) {
                    Some(&a) => alerts[a].1 += 1,
                    None => {
                        alert_pos.insert(x.alert, alerts.len());
                        alerts.push((x.alert, 1, x.timestamp, r));
                    }
                }
            }
            n_alerts += alerts.len() as u64;
            let shape: Vec<u32> = alerts.iter().map(|a| a.1).collect();
            let next = shapes.len() as u32;
            let shape_id = *shapes.entry(shape.clone()).or_insert_with(|| {
                shape_spans.push((shape_rows.len() as u32, shape.len() as u32));
                shape_rows.extend_from_slice(&shape);
                next
            });
            for w in alerts.windows(2) {
                *gaps.entry((w[1].2 - w[0].2).max(0)).or_default() += 1;
            }
            for a in &alerts {
                *tuple_counts
                    .entry((class, a.1 > 1, row_tuple[a.3 as usize]))
                    .or_default() += 1;
            }
            let mut last = [None; N_ID_COLUMNS];
            for &r in &rows {
                let r = r as usize;
                let cat = tuple_cat[row_tuple[r] as usize] as usize;
                *tpl_counts
                    .entry((class as usize * n_cat + cat, row_tpl[r]))
                    .or_default() += 1;
                if class != NO_GRADE {
                    graded_rows += 1;
                    blank_rows += u64::from(ev[r].grade.is_none());
                }
                for (e, id) in ids.iter().enumerate() {
                    let Some(code) = ev[r].entities.codes[e] else {
                        continue;
                    };
                    if Some(code) == id.placeholder {
                        continue;
                    }
                    if let Some(prev) = last[e] {
                        reuse[e].0 += 1;
                        reuse[e].1 += u64::from(prev == code);
                    }
                    last[e] = Some(code);
                    distinct.insert((inc.key.tenant.0, e, code));
                }
            }
            incidents.push(IncidentRec {
                class,
                shape: shape_id,
                usage: row_usage[rows[0] as usize],
            });
            *days
                .entry(inc.first_seen.div_euclid(86_400) - first_day)
                .or_default() += 1;
            hours[(inc.first_seen.rem_euclid(86_400) / 3600) as usize] += 1.0;
        }
        let n_rows = ev.len() as u64;
        let mut per_col_distinct = [0u64; N_ID_COLUMNS];
        for &(_, e, _) in &distinct {
            per_col_distinct[e] += 1;
        }
        for (e, id) in ids.iter_mut().enumerate() {
            id.decimal = 2 * dotted[e] > present[e];
            id.pool_rate = per_col_distinct[e] as f64 / n_rows as f64;
            id.reuse = if reuse[e].0 > 0 {
                reuse[e].1 as f64 / reuse[e].0 as f64
            } else {
                0.0
            };
        }

        let must = |t: Option<Table>, what: &str| t.ok_or_else(|| fit_err(format!("no {what}")));
        let tuples_cell = (0..N_CLASSES * 2)
            .map(|cm| {
                Table::from_counts(
                    tuple_counts
                        .iter()
                        .filter(|((c, m, _), _)| *c as usize * 2 + usize::from(*m) == cm)
                        .map(|((_, _, t), &n)| (*t, n)),
                )
            })
            .collect();
        let mut by_class: Vec<BTreeMap<u32, u64>> = vec![BTreeMap::new(); N_CLASSES];
        let mut all: BTreeMap<u32, u64> = BTreeMap::new();
        for (&(c, _, t), &n) in &tuple_counts {
            *by_class[c as usize].entry(t).or_default() += n;
            *all.entry(t).or_default() += n;
        }
        let tuples_class = by_class.into_iter().map(Table::from_counts).collect();
        let tuples_all = must(Table::from_counts(all), "alerts")?;
        let mut tpl_cell = vec![None; N_CLASSES * n_cat];
        let mut cell_counts: Vec<Vec<(u32, u64)>> = vec![Vec::new(); N_CLASSES * n_cat];
        let mut cat_counts: Vec<BTreeMap<u32, u64>> = vec![BTreeMap::new(); n_cat];
        for (&(cell, t), &n) in &tpl_counts {
            cell_counts[cell].push((t, n));
            *cat_counts[cell % n_cat].entry(t).or_default() += n;
        }
        for (slot, counts) in tpl_cell.iter_mut().zip(cell_counts) {
            *slot = Table::from_counts(counts);
        }
        let tpl_cat = cat_counts
            .into_iter()
            .map(|c| must(Table::from_counts(c), "evidence rows of a category"))
            .collect::<Result<Vec<_>, _>>()?;
        let gap_values: Vec<i64> = gaps.keys().copied().collect();
        let gaps = Table::from_counts(gaps.values().enumerate().map(|(i, &n)| (i as u32, n)));
        let days = must(
            Table::from_counts(days.iter().map(|(&d, &n)| (d as u32, n))),
            "incident start days",
        )?;
        let hours = Alias::new(&hours).ok_or_else(|| fit_err("no hours".into()))?;
        let mut sizes: BTreeMap<u64, u32> = BTreeMap::new();
        for inc in &corr.incidents {
            *sizes.entry(inc.key.tenant.0).or_default() += 1;
        }
        let stats = ProfileStats {
            rows: n_rows,
            incidents: corr.incidents.len() as u64,
            alerts: n_alerts,
            tenants: sizes.len() as u64,
            incident_grades,
        };
        let mut tenant_sizes: Vec<u32> = sizes.into_values().collect();
        tenant_sizes.sort_unstable();

        // Pre-render the runs of consecutive alert columns (per alert draw) and of evidence-row
        // columns (per template; a real code splits the text into pieces).
        let (steps, alert_cols, row_cols) = group_steps(&plan);
        let (mut alert_text, mut alert_spans) = (Vec::new(), Vec::new());
        for key in tuples
            .flat
            .chunks_exact(n_alert.max(1))
            .take(tuple_cat.len())
        {
            for run in &alert_cols {
                let start = alert_text.len();
                for (k, op) in run.iter().enumerate() {
                    if k > 0 {
                        alert_text.push(b',');
                    }
                    if let Op::AlertCol(j) = *op {
                        alert_text.extend_from_slice(strings.get(key[j]));
                    }
                }
                alert_spans.push((start, alert_text.len()));
            }
        }
        let (mut row_text, mut row_pieces, mut row_runs) = (Vec::new(), Vec::new(), Vec::new());
        let width = n_row + N_ID_COLUMNS;
        for key in templates.flat.chunks_exact(width) {
            for run in &row_cols {
                let first = row_pieces.len() as u32;
                let mut start = row_text.len();
                for (k, op) in run.iter().enumerate() {
                    if k > 0 {
                        row_text.push(b',');
                    }
                    match *op {
                        Op::RowCol(j) => row_text.extend_from_slice(strings.get(key[j])),
                        Op::IdCol(e) => match key[n_row + e] {
                            PLACEHOLDER => {
                                if let Some(t) = ids[e].placeholder_text {
                                    row_text.extend_from_slice(strings.get(t));
                                }
                            }
                            PRESENT => {
                                row_pieces.push(Piece {
                                    start: start as u32,
                                    len: (row_text.len() - start) as u32,
                                    code: e as u8,
                                });
                                start = row_text.len();
                            }
                            _ => {}
                        },
                        _ => {}
                    }
                }
                row_pieces.push(Piece {
                    start: start as u32,
                    len: (row_text.len() - start) as u32,
                    code: NO_CODE,
                });
                row_runs.push((first, row_pieces.len() as u32 - first));
            }
        }
        if row_text.len() > u32::MAX as usize {
            return Err(fit_err("evidence-row templates exceed 4 GiB".into()));
        }
        Ok(Profile {
            file: name.to_string(),
            header,
            steps,
            n_alert_runs: alert_cols.len(),
            alert_text,
            alert_spans,
            n_row_runs: row_cols.len(),
            row_text,
            row_pieces,
            row_runs,
            millis: 2 * millis > n_rows,
            stats,
            incidents,
            shape_spans,
            shape_rows,
            gaps,
            gap_values,
            first_day,
            days,
            hours,
            blank_row_share: if graded_rows > 0 {
                blank_rows as f64 / graded_rows as f64
            } else {
                0.0
            },
            tuple_cat,
            tuples_cell,
            tuples_class,
            tuples_all,
            n_cat,
            tpl_cell,
            tpl_cat,
            ids,
            tenant_sizes,
            strings,
        })
    }

    fn draw_tuple(&self, rng: &mut SplitMix64, class: u8, multi: bool, smoothing: f64) -> u32 {
        if smoothing > 0.0 && rng.unit() < smoothing {
            return self.tuples_all.sample(rng);
        }
        let c = class as usize;
        self.tuples_cell[c * 2 + usize::from(multi)]
            .as_ref()
            .or(self.tuples_class[c].as_ref())
            .unwrap_or(&self.tuples_all)
            .sample(rng)
    }

    fn draw_template(&self, rng: &mut SplitMix64, class: u8, cat: u32, smoothing: f64) -> u32 {
        let pooled = &self.tpl_cat[cat as usize];
        if smoothing > 0.0 && rng.unit() < smoothing {
            return pooled.sample(rng);
        }
        self.tpl_cell[class as usize * self.n_cat + cat as usize]
            .as_ref()
            .unwrap_or(pooled)
            .sample(rng)
    }
}

/// Per-tenant weights and code pools of one run.
struct Tenants {
    alias: Alias,
    /// first code of each tenant's pools (pools of different tenants are disjoint)
    offset: Vec<u64>,
    /// expected rows of each tenant
    rows: Vec<f64>,
}

impl Tenants {
    fn draw(profile: &Profile, p: &SynthParams) -> Tenants {
        let mut rng = SplitMix64(mix64(p.seed ^ 0x7465_6e61_6e74_7321));
        let sizes = &profile.tenant_sizes;
        let mut w: Vec<f64> = (0..p.tenants)
            .map(|_| f64::from(sizes[rng.below(sizes.len())]) + rng.unit())
            .collect();
        w.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = w.iter().sum();
        let rows: Vec<f64> = w.iter().map(|x| p.rows as f64 * x / total).collect();
        let mut offset = Vec::with_capacity(rows.len());
        let mut next = 0u64;
        for r in &rows {
            offset.push(next);
            next += r.ceil() as u64 + 1;
        }
        Tenants {
            // Weights are ≥ 1 (every fit tenant has an incident), so the table exists.
            alias: Alias::new(&w).unwrap_or_else(|| Alias {
                keep: vec![1 << 32],
                other: vec![0],
            }),
            offset,
            rows,
        }
    }
}

/// An incident whose rows are being written.
struct Open {
    tenant: u32,
    class: u8,
    usage: u32,
    incident: u64,
    shape: u32,
    next_alert: u32,
    left_in_alert: u32,
    rows_left: u64,
    alert: u64,
    tuple: u32,
    cat: u32,
    time: i64,
    /// previous real code per identifying column (`u64::MAX`: none yet)
    last: [u64; N_ID_COLUMNS],
}

/// Running state of one [`generate`] run.
struct Run<'a> {
    profile: &'a Profile,
    tenants: Tenants,
    used: Vec<u64>,
    rng: SplitMix64,
    smoothing: f64,
    next_incident: u64,
    next_alert: u64,
}

impl Run<'_> {
    fn open(&mut self, max_rows: u64) -> Open {
        let pr = self.profile;
        let tenant = self.tenants.alias.sample(&mut self.rng) as u32;
        self.used[tenant as usize / 64] |= 1u64 << (tenant % 64);
        let rec = pr.incidents[self.rng.below(pr.incidents.len())];
        let (start, len) = pr.shape_spans[rec.shape as usize];
        let total: u64 = pr.shape_rows[start as usize..(start + len) as usize]
            .iter()
            .map(|&r| u64::from(r))
            .sum();
        let day = i64::from(pr.days.sample(&mut self.rng));
        let hour = pr.hours.sample(&mut self.rng) as i64;
        let sec = self.rng.below(3600) as i64;
        let incident = self.next_incident;
        self.next_incident += 1;
        Open {
            tenant,
            class: rec.class,
            usage: rec.usage,
            incident,
            shape: rec.shape,
            next_alert: 0,
            left_in_alert: 0,
            rows_left: total.min(max_rows),
            alert: 0,
            tuple: 0,
            cat: 0,
            time: (pr.first_day + day) * 86_400 + hour * 3600 + sec,
            last: [u64::MAX; N_ID_COLUMNS],
        }
    }

    /// Moves `o` to its next alert when the current one is written out.
    fn advance(&mut self, o: &mut Open) {
        if o.left_in_alert > 0 {
            return;
        }
        let pr = self.profile;
        let (start, len) = pr.shape_spans[o.shape as usize];
        let rows = pr.shape_rows[(start + o.next_alert.min(len - 1)) as usize];
        if o.next_alert > 0 {
            if let Some(g) = &pr.gaps {
                o.time += pr.gap_values[g.sample(&mut self.rng) as usize];
            }
        }
        o.next_alert += 1;
        o.left_in_alert = rows;
        o.alert = self.next_alert;
        self.next_alert += 1;
        o.tuple = pr.draw_tuple(&mut self.rng, o.class, rows > 1, self.smoothing);
        o.cat = pr.tuple_cat[o.tuple as usize];
    }

    /// A real code of identifying column `e` for a row of `o`.
    fn code(&mut self, o: &mut Open, e: usize) -> u64 {
        let id = &self.profile.ids[e];
        if o.last[e] != u64::MAX && id.reuse > 0.0 && self.rng.unit() < id.reuse {
            return o.last[e];
        }
        let t = o.tenant as usize;
        let pool = (id.pool_rate * self.tenants.rows[t]).ceil().max(1.0) as u64;
        let k = zipf_rank(&mut self.rng, pool);
        // Rotate ranks by a per-(tenant, column) shift, so that the columns of one tenant do
        // not all start their most frequent code at the same number.
        let shift =
            ((u128::from(mix64((t as u64) << 5 | e as u64)) * u128::from(pool)) >> 64) as u64;
        let k = if k + shift >= pool {
            k + shift - pool
        } else {
            k + shift
        };
        let mut code = self.tenants.offset[t] + k;
        if id.placeholder.is_some_and(|p| code >= p) {
            code += 1;
        }
        o.last[e] = code;
        code
    }

    /// Appends the next row of `o` (`row` = its `Id`).
    fn write_row(&mut self, o: &mut Open, row: u64, buf: &mut Vec<u8>) {
        self.advance(o);
        o.left_in_alert -= 1;
        o.rows_left -= 1;
        let pr = self.profile;
        let tpl = pr.draw_template(&mut self.rng, o.class, o.cat, self.smoothing) as usize;
        let blank =
            o.class != NO_GRADE && pr.blank_row_share > 0.0 && self.rng.unit() < pr.blank_row_share;
        for (c, step) in pr.steps.iter().enumerate() {
            if c > 0 {
                buf.push(b',');
            }
            match *step {
                Step::Id => push_u64(buf, row),
                Step::Org => push_u64(buf, u64::from(o.tenant)),
                Step::Incident => push_u64(buf, o.incident),
                Step::Alert => push_u64(buf, o.alert),
                Step::Time => push_time(buf, o.time, pr.millis),
                Step::Grade if !blank => buf.extend_from_slice(GRADE_TEXT[o.class as usize]),
                Step::Grade => {}
                Step::Usage => buf.extend_from_slice(pr.strings.get(o.usage)),
                Step::AlertRun(r) => {
                    let (a, b) = pr.alert_spans[o.tuple as usize * pr.n_alert_runs + r];
                    buf.extend_from_slice(&pr.alert_text[a..b]);
                }
                Step::RowRun(r) => {
                    let (first, n) = pr.row_runs[tpl * pr.n_row_runs + r];
                    for p in &pr.row_pieces[first as usize..(first + n) as usize] {
                        let a = p.start as usize;
                        buf.extend_from_slice(&pr.row_text[a..a + p.len as usize]);
                        if p.code != NO_CODE {
                            let e = p.code as usize;
                            let code = self.code(o, e);
                            push_u64(buf, code);
                            if pr.ids[e].decimal {
                                buf.extend_from_slice(b".0");
                            }
                        }
                    }
                }
            }
        }
        buf.push(b'\n');
    }
}

/// Writes `params.rows` synthetic rows (after the profile's header) to `out`; see the
/// [module docs](self). Rows are formatted into one reused buffer and written in chunks of
/// about 256 KiB; `out` is flushed at the end (wrapping a file in a `BufWriter` is harmless).
pub fn generate<W: Write>(
    profile: &Profile,
    params: &SynthValidParams,
    out: W,
) -> Result<SynthSummary, SynthError> {
    generate_with_progress(profile, params, out, &mut |_| {})
}

/// [`generate`], calling `progress(rows written so far)` every 65,536 rows and at the end.
pub fn generate_with_progress<W: Write>(
    profile: &Profile,
    params: &SynthValidParams,
    mut out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<SynthSummary, SynthError> {
    let p = params.get();
    let write_err = |source| SynthError::Write {
        target: "output".into(),
        source,
    };
    let tenants = Tenants::draw(profile, p);
    let mut run = Run {
        profile,
        used: vec![0u64; tenants.offset.len().div_ceil(64)],
        tenants,
        rng: SplitMix64(mix64(p.seed ^ 0x726f_7773_2121_2121)),
        smoothing: p.grade_smoothing,
        next_incident: 0,
        next_alert: 0,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 4096);
    for (i, h) in profile.header.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_csv_field(&mut buf, h);
    }
    buf.push(b'\n');
    let mut bytes = 0u64;
    let mut started = 0u64;
    let mut open: Vec<Open> = Vec::with_capacity(p.open_incidents.min(p.rows as usize));
    while open.len() < p.open_incidents && started < p.rows {
        let o = run.open(p.rows - started);
        started += o.rows_left;
        open.push(o);
    }
    for row in 0..p.rows {
        // Invariant: the open incidents hold exactly the rows still to write.
        let i = run.rng.below(open.len());
        run.write_row(&mut open[i], row, &mut buf);
        if open[i].rows_left == 0 {
            if started < p.rows {
                open[i] = run.open(p.rows - started);
                started += open[i].rows_left;
            } else {
                open.swap_remove(i);
            }
        }
        if buf.len() >= CHUNK {
            out.write_all(&buf).map_err(write_err)?;
            bytes += buf.len() as u64;
            buf.clear();
        }
        if (row + 1) % PROGRESS_EVERY == 0 {
            progress(row + 1);
        }
    }
    out.write_all(&buf).map_err(write_err)?;
    bytes += buf.len() as u64;
    out.flush().map_err(write_err)?;
    progress(p.rows);
    Ok(SynthSummary {
        rows: p.rows,
        incidents: run.next_incident,
        alerts: run.next_alert,
        tenants: run.used.iter().map(|w| u64::from(w.count_ones())).sum(),
        bytes,
    })
}

/// A Zipf-like rank in `0..pool` (`pool ≥ 1`) with integer draws only, so the same on every
/// platform (no `ln`/`exp`): one of the power-of-two buckets `[2^m, 2^(m+1))` that meet
/// `1..=pool` is chosen uniformly, then a value in it, minus one. `P(k) ≈ 1 / ((k + 1) · L)`
/// with `L` the bit length of `pool`: Zipf with exponent 1, piecewise.
#[inline]
fn zipf_rank(rng: &mut SplitMix64, pool: u64) -> u64 {
    let buckets = (u64::BITS - pool.leading_zeros()) as usize;
    let lo = 1u64 << rng.below(buckets);
    let hi = lo.saturating_mul(2).min(pool.saturating_add(1));
    lo + rng.below((hi - lo) as usize) as u64 - 1
}

/// Appends `v` in decimal.
#[inline]
fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Appends `v` (< 10^width) zero-padded to `width` digits.
#[inline]
fn push_padded(buf: &mut Vec<u8>, v: i64, width: usize) {
    let mut tmp = [b'0'; 4];
    let mut v = v.max(0);
    for d in tmp[..width].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.extend_from_slice(&tmp[..width]);
}

/// Appends Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (with `.000` before the `Z` when `millis`),
/// as [`ingest::format_rfc3339`] spells it, without allocating.
fn push_time(buf: &mut Vec<u8>, t: i64, millis: bool) {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    push_padded(buf, y, 4);
    buf.push(b'-');
    push_padded(buf, m, 2);
    buf.push(b'-');
    push_padded(buf, d, 2);
    buf.push(b'T');
    push_padded(buf, s / 3600, 2);
    buf.push(b':');
    push_padded(buf, s / 60 % 60, 2);
    buf.push(b':');
    push_padded(buf, s % 60, 2);
    if millis {
        buf.extend_from_slice(b".000");
    }
    buf.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{format_rfc3339, parse_rfc3339};

    fn sample_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/guide/guide_sample.csv")
    }

    fn sample_profile() -> &'static Profile {
        static P: std::sync::OnceLock<Profile> = std::sync::OnceLock::new();
        P.get_or_init(|| Profile::fit_file(&sample_path()).expect("the shipped sample fits"))
    }

    #[test]
    fn alias_draws_follow_the_weights() {
        let w = [1.0, 2.0, 3.0, 0.0, 4.0];
        let a = Alias::new(&w).unwrap();
        let mut rng = SplitMix64(7);
        let mut counts = [0u32; 5];
        let n = 200_000;
        for _ in 0..n {
            counts[a.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[3], 0, "a zero weight is never drawn");
        for (c, w) in counts.iter().zip(w) {
            let share = f64::from(*c) / f64::from(n);
            assert!((share - w / 10.0).abs() < 0.005, "{counts:?}");
        }
        assert!(Alias::new(&[]).is_none());
        assert!(Alias::new(&[0.0, 0.0]).is_none());
        let one = Alias::new(&[5.0]).unwrap();
        assert!((0..100).all(|_| one.sample(&mut rng) == 0));
    }

    #[test]
    fn numbers_and_times_are_formatted_like_the_standard_library() {
        for v in [0u64, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut b = Vec::new();
            push_u64(&mut b, v);
            assert_eq!(b, v.to_string().into_bytes());
        }
        // 2024-02-29 (leap day), the sample's first and last seconds, the epoch, 2000-02-29.
        for t in [
            1_709_164_800i64,
            1_706_888_283,
            1_718_611_830,
            0,
            951_825_600,
            86_399,
        ] {
            let mut b = Vec::new();
            push_time(&mut b, t, false);
            assert_eq!(String::from_utf8(b.clone()).unwrap(), format_rfc3339(t));
            b.clear();
            push_time(&mut b, t, true);
            let s = String::from_utf8(b).unwrap();
            assert!(s.ends_with(".000Z"), "{s}");
            assert_eq!(parse_rfc3339(&s), Ok(t));
        }
    }

    /// Ranks stay in range, every rank of a small pool is reachable, and the bucket shares
    /// are the stated 1/L: pool 7 (L = 3) gives rank 0 one third of the draws, ranks 1–2 one
    /// third together, ranks 3–6 one third together.
    #[test]
    fn zipf_ranks_follow_their_buckets() {
        let mut rng = SplitMix64(11);
        let n = 120_000;
        let mut counts = [0u32; 7];
        for _ in 0..n {
            counts[zipf_rank(&mut rng, 7) as usize] += 1;
        }
        let share =
            |r: std::ops::Range<usize>| f64::from(counts[r].iter().sum::<u32>()) / f64::from(n);
        for r in [0..1, 1..3, 3..7] {
            assert!(
                (share(r.clone()) - 1.0 / 3.0).abs() < 0.01,
                "{r:?}: {counts:?}"
            );
        }
        assert!(counts.iter().all(|&c| c > 0));
        assert!((0..1000).all(|_| zipf_rank(&mut rng, 1) == 0));
        for pool in [2, 3, 1000, u64::MAX >> 1] {
            assert!((0..1000).all(|_| zipf_rank(&mut rng, pool) < pool));
        }
    }

    #[test]
    fn fields_are_quoted_only_when_needed() {
        let mut b = Vec::new();
        push_csv_field(&mut b, "plain text.");
        b.push(b'|');
        push_csv_field(&mut b, "a,b \"c\"");
        assert_eq!(b, b"plain text.|\"a,b \"\"c\"\"\"");
    }

    #[test]
    fn params_are_checked() {
        let err = |p: SynthParams| match p.check() {
            Err(SynthError::Param { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(err(SynthParams::default().rows(0)), "rows");
        assert_eq!(err(SynthParams::default().tenants(0)), "tenants");
        assert_eq!(
            err(SynthParams::default().tenants(MAX_TENANTS + 1)),
            "tenants"
        );
        assert_eq!(
            err(SynthParams::default().open_incidents(0)),
            "open_incidents"
        );
        assert_eq!(
            err(SynthParams::default().grade_smoothing(f64::NAN)),
            "grade_smoothing"
        );
        assert_eq!(
            err(SynthParams::default().grade_smoothing(1.5)),
            "grade_smoothing"
        );
        assert!(SynthParams::default().check().is_ok());
    }

    /// Reference values from a Python pass over the shipped sample (`csv.DictReader`, counts
    /// of `(OrgId, IncidentId)`, `OrgId`, `IncidentGrade`, most frequent value per column).
    #[test]
    fn the_sample_profile_holds_the_sample_counts() {
        let p = sample_profile();
        let s = p.stats();
        assert_eq!((s.rows, s.incidents, s.tenants), (10_000, 6_435, 1_061));
        // TP / BP / FP incidents sum to all incidents; the sample has no ungraded row.
        assert_eq!(s.incident_grades.iter().sum::<u64>(), 6_435);
        assert_eq!(s.incident_grades[3], 0);
        assert_eq!(p.header().len(), 46);
        assert_eq!(p.placeholder("DeviceId"), Some("98799"));
        assert_eq!(p.placeholder("Sha256"), Some("138268"));
        assert_eq!(p.placeholder("IpAddress"), Some("360606"));
        // Empty cells are EmailClusterId's most frequent value; its codes are decimals.
        assert_eq!(p.placeholder("EmailClusterId"), None);
        let e = ENTITY_COLUMNS
            .iter()
            .position(|c| *c == "EmailClusterId")
            .unwrap();
        assert!(p.ids[e].decimal);
        assert!(!p.ids[0].decimal);
        assert_eq!(p.placeholder("OSFamily"), None, "not an identifying column");
        assert!(p.millis);
        assert_eq!(
            p.tenant_sizes.iter().map(|&n| u64::from(n)).sum::<u64>(),
            6_435
        );
        assert_eq!(p.tenant_sizes.last(), Some(&189), "largest tenant: OrgId 2");
    }

    #[test]
    fn pool_codes_stay_in_the_tenants_range_and_skip_the_placeholder() {
        let p = sample_profile();
        let params = SynthParams::default().rows(50_000).tenants(20);
        let tenants = Tenants::draw(p, &params);
        let mut run = Run {
            profile: p,
            used: vec![0; 1],
            tenants,
            rng: SplitMix64(3),
            smoothing: 0.1,
            next_incident: 0,
            next_alert: 0,
        };
        let mut o = run.open(u64::MAX);
        for t in [0u32, 19] {
            o.tenant = t;
            let lo = run.tenants.offset[t as usize];
            let hi = lo + run.tenants.rows[t as usize].ceil() as u64 + 1;
            for e in 0..N_ID_COLUMNS {
                for _ in 0..200 {
                    o.last = [u64::MAX; N_ID_COLUMNS];
                    let c = run.code(&mut o, e);
                    let ph = p.ids[e].placeholder;
                    assert_ne!(Some(c), ph);
                    // At most one code shifted past the placeholder.
                    assert!(c >= lo && c <= hi, "{c} not in {lo}..={hi}");
                }
            }
        }
        assert!(
            run.tenants.rows[0] > run.tenants.rows[19],
            "tenants are numbered by decreasing weight"
        );
    }

    #[test]
    fn a_small_run_is_deterministic_and_has_the_header_and_row_count() {
        let p = sample_profile();
        let params = SynthParams::default()
            .rows(3_000)
            .tenants(30)
            .check()
            .unwrap();
        let mut a = Vec::new();
        let s = generate(p, &params, &mut a).unwrap();
        let mut b = Vec::new();
        generate(p, &params, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(s.bytes, a.len() as u64);
        let text = String::from_utf8(a).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), p.header().join(","));
        assert_eq!(lines.clone().count(), 3_000);
        assert!(lines.all(|l| l.split(',').count() == 46));
        assert!(s.tenants <= 30 && s.incidents > 0 && s.alerts >= s.incidents);
    }
}
