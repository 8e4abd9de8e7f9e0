//! Streaming reader for Microsoft GUIDE CSV exports (`GUIDE_Train.csv`: 45 columns,
//! `GUIDE_Test.csv`: 46 with `Usage`). Columns are found by header name, so order and extra
//! columns do not matter; the required ones are [`GUIDE_REQUIRED`].

use super::time::parse_rfc3339;
use super::{IngestError, IngestValidParams, RecordResult, RecordSource, Rejection};
use crate::domain::{
    AlertId, Entities, Evidence, Grade, IncidentId, TenantId, ENTITY_COLUMNS, GIVEN_ID_LIMIT,
    N_ENTITY_COLUMNS, RESERVED_ID_REASON,
};
use csv::ByteRecord;
use rayon::prelude::*;
use std::io::Read;

/// All 46 columns of `GUIDE_Test.csv`, in file order (`GUIDE_Train.csv` lacks `Usage`).
pub const GUIDE_COLUMNS: [&str; 46] = [
    "Id",
    "OrgId",
    "IncidentId",
    "AlertId",
    "Timestamp",
    "DetectorId",
    "AlertTitle",
    "Category",
    "MitreTechniques",
    "IncidentGrade",
    "ActionGrouped",
    "ActionGranular",
    "EntityType",
    "EvidenceRole",
    "DeviceId",
    "Sha256",
    "IpAddress",
    "Url",
    "AccountSid",
    "AccountUpn",
    "AccountObjectId",
    "AccountName",
    "DeviceName",
    "NetworkMessageId",
    "EmailClusterId",
    "RegistryKey",
    "RegistryValueName",
    "RegistryValueData",
    "ApplicationId",
    "ApplicationName",
    "OAuthApplicationId",
    "ThreatFamily",
    "FileName",
    "FolderPath",
    "ResourceIdName",
    "ResourceType",
    "Roles",
    "OSFamily",
    "OSVersion",
    "AntispamDirection",
    "SuspicionLevel",
    "LastVerdict",
    "CountryCode",
    "State",
    "City",
    "Usage",
];

/// Columns a GUIDE file must have.
pub const GUIDE_REQUIRED: [&str; 10] = [
    "Id",
    "OrgId",
    "IncidentId",
    "AlertId",
    "Timestamp",
    "DetectorId",
    "AlertTitle",
    "Category",
    "EntityType",
    "EvidenceRole",
];

/// Column positions resolved from the header.
#[derive(Debug, Clone)]
struct Columns {
    id: usize,
    org: usize,
    incident: usize,
    alert: usize,
    timestamp: usize,
    detector: usize,
    title: usize,
    category: usize,
    entity_type: usize,
    role: usize,
    techniques: Option<usize>,
    grade: Option<usize>,
    entities: [Option<usize>; N_ENTITY_COLUMNS],
    suspicion: Option<usize>,
    verdict: Option<usize>,
    family: Option<usize>,
    antispam: Option<usize>,
    roles: Option<usize>,
}

/// Streaming GUIDE reader: yields one item per data row.
///
/// [`GuideReader::next_batch`] reads ahead: while one batch's records are parsed (in
/// parallel), the next batch's raw records are read, so reading the bytes (one thread: the
/// CSV state machine and line tracking) overlaps with parsing them.
pub struct GuideReader<R: Read> {
    raw: RawState<R>,
    parser: GuideParser,
    record: ByteRecord,
    /// the raw records of the batch [`GuideReader::next_batch`] returned last
    pool: RawBatch,
    /// raw records already read for the next batch
    ahead: Option<RawBatch>,
    /// an emptied batch whose buffers the next read-ahead reuses
    spare: RawBatch,
}

/// What reading raw records needs (everything but the parser).
struct RawState<R: Read> {
    inner: csv::Reader<Tracked<R>>,
    events: Events,
    lines_before: u64,
    index: u64,
    done: bool,
}

/// Raw records read but not yet parsed: `meta[i]` (index, line or rejection) goes with
/// `recs[i]`; `recs` may hold more (reused) buffers than `meta` has entries.
#[derive(Default)]
struct RawBatch {
    recs: Vec<ByteRecord>,
    meta: Vec<(u64, Result<u64, Rejection>)>,
}

impl RawBatch {
    /// Reads up to `max` records (fewer at the end of the input).
    fn fill<R: Read>(&mut self, raw: &mut RawState<R>, parser: &GuideParser, max: usize) {
        self.meta.clear();
        if self.recs.len() < max {
            self.recs.resize_with(max, ByteRecord::new);
        }
        for rec in self.recs[..max].iter_mut() {
            match raw.read_raw(parser, rec) {
                Some(m) => self.meta.push(m),
                None => break,
            }
        }
    }

    /// Parses the batch in parallel (rayon), in order; `meta` is consumed (`recs` stay, for
    /// [`GuideReader::next_batch_raw`]).
    fn parse(&mut self, parser: &GuideParser) -> Vec<RecordResult> {
        self.meta
            .par_drain(..)
            .zip(self.recs.par_iter())
            .map(|((index, r), rec)| {
                r.and_then(|line| parser.parse(rec, line, index).map(|e| vec![e]))
            })
            .collect()
    }

    /// Moves the records after the first `n` into a new batch.
    fn split_off(&mut self, n: usize) -> RawBatch {
        let meta = self.meta.split_off(n);
        let recs = self.recs.split_off(n);
        RawBatch { recs, meta }
    }
}

/// What turns one raw record into evidence: no reader state, so records parse in parallel.
#[derive(Debug)]
pub(crate) struct GuideParser {
    file: String,
    header: Vec<String>,
    cols: Columns,
    max_field: usize,
    only_tenant: Option<u64>,
}

impl<R: Read> GuideReader<R> {
    /// Reads and checks the header; errors on an empty file or a header lacking
    /// [`GUIDE_REQUIRED`] columns.
    pub fn new(reader: R, file: &str, params: &IngestValidParams) -> Result<Self, IngestError> {
        let events = Events::default();
        let mut inner = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(Tracked {
                inner: reader,
                events: events.clone(),
                offset: 0,
                last: None,
            });
        let mut rec = ByteRecord::new();
        let got = inner
            .read_byte_record(&mut rec)
            .map_err(|e| IngestError::BadHeader {
                file: file.to_string(),
                reason: e.to_string(),
            })?;
        if !got {
            return Err(IngestError::Empty {
                file: file.to_string(),
            });
        }
        let mut header = Vec::with_capacity(rec.len());
        for (i, f) in rec.iter().enumerate() {
            let f = if i == 0 {
                f.strip_prefix(b"\xef\xbb\xbf").unwrap_or(f)
            } else {
                f
            };
            let s = std::str::from_utf8(f).map_err(|e| IngestError::BadHeader {
                file: file.to_string(),
                reason: format!("field {} is not valid UTF-8 ({e})", i + 1),
            })?;
            header.push(s.trim().to_string());
        }
        let parser = GuideParser::from_header(header, file, params)?;
        Ok(Self {
            raw: RawState {
                inner,
                events,
                lines_before: 0,
                index: 0,
                done: false,
            },
            parser,
            record: ByteRecord::new(),
            pool: RawBatch::default(),
            ahead: None,
            spare: RawBatch::default(),
        })
    }

    /// Header names as read.
    pub fn header(&self) -> &[String] {
        &self.parser.header
    }

    /// [`GuideReader::next_batch`], also lending the raw records (aligned with the results):
    /// what `convert` writes for the accepted ones.
    #[cfg(feature = "parquet")]
    pub(crate) fn next_batch_raw(&mut self, max: usize) -> (Vec<RecordResult>, &[ByteRecord])
    where
        R: Send,
    {
        let out = self.next_batch(max);
        let n = out.len();
        (out, &self.pool.recs[..n])
    }

    /// Reads up to `max` records and parses them in parallel (rayon), in input order; the
    /// same items [`Iterator::next`] would give. Empty at the end of the input. The next
    /// batch's raw records are read meanwhile (see [`GuideReader`]).
    pub fn next_batch(&mut self, max: usize) -> Vec<RecordResult>
    where
        R: Send,
    {
        let max = max.max(1);
        let mut cur = match self.ahead.take() {
            Some(mut b) => {
                if b.meta.len() > max {
                    self.ahead = Some(b.split_off(max));
                }
                b
            }
            None => {
                let mut b = std::mem::take(&mut self.spare);
                b.fill(&mut self.raw, &self.parser, max);
                b
            }
        };
        if cur.meta.is_empty() {
            self.pool = cur;
            return Vec::new();
        }
        let parser = &self.parser;
        let out = if self.ahead.is_none() && !self.raw.done {
            let mut next = std::mem::take(&mut self.pool);
            let raw = &mut self.raw;
            let (out, ()) = rayon::join(|| cur.parse(parser), || next.fill(raw, parser, max));
            self.ahead = Some(next);
            out
        } else {
            cur.parse(parser)
        };
        self.spare = std::mem::replace(&mut self.pool, std::mem::take(&mut cur));
        out
    }
}

impl GuideParser {
    /// A parser for records laid out as `header` (names trimmed, in field order); errors when
    /// a [`GUIDE_REQUIRED`] column is missing.
    pub(crate) fn from_header(
        header: Vec<String>,
        file: &str,
        params: &IngestValidParams,
    ) -> Result<GuideParser, IngestError> {
        let find = |name: &str| header.iter().position(|h| h == name);
        let missing: Vec<&str> = GUIDE_REQUIRED
            .iter()
            .copied()
            .filter(|c| find(c).is_none())
            .collect();
        if !missing.is_empty() {
            let shown: Vec<String> = header
                .iter()
                .take(6)
                .map(|h| format!("{:?}", truncate(h, 40)))
                .collect();
            return Err(IngestError::Header {
                file: file.to_string(),
                missing: missing.join(", "),
                found: header.len(),
                found_names: shown.join(", ") + if header.len() > 6 { ", …" } else { "" },
            });
        }
        let req = |name: &str| find(name).unwrap_or(usize::MAX);
        let mut entities = [None; N_ENTITY_COLUMNS];
        for (slot, name) in entities.iter_mut().zip(ENTITY_COLUMNS) {
            *slot = find(name);
        }
        let p = params.get();
        let cols = Columns {
            id: req("Id"),
            org: req("OrgId"),
            incident: req("IncidentId"),
            alert: req("AlertId"),
            timestamp: req("Timestamp"),
            detector: req("DetectorId"),
            title: req("AlertTitle"),
            category: req("Category"),
            entity_type: req("EntityType"),
            role: req("EvidenceRole"),
            techniques: find("MitreTechniques"),
            grade: if p.read_labels {
                find("IncidentGrade")
            } else {
                None
            },
            entities,
            suspicion: find("SuspicionLevel"),
            verdict: find("LastVerdict"),
            family: find("ThreatFamily"),
            antispam: find("AntispamDirection"),
            roles: find("Roles"),
        };
        Ok(GuideParser {
            file: file.to_string(),
            header,
            cols,
            max_field: p.max_field_bytes,
            only_tenant: p.only_tenant,
        })
    }

    /// The file named in rejections.
    #[cfg(feature = "parquet")]
    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    fn reject(&self, index: u64, line: u64, column: Option<usize>, reason: String) -> Rejection {
        Rejection {
            file: self.file.clone(),
            line,
            record: index,
            column: column.map(|c| self.header[c].clone()),
            reason,
        }
    }

    /// Parses one raw record (`line`: where it starts in its file, 1-based; `index`: its
    /// 0-based record number) into evidence, or its rejection naming file, line and column.
    pub(crate) fn parse(
        &self,
        rec: &ByteRecord,
        line: u64,
        index: u64,
    ) -> Result<Evidence, Rejection> {
        if rec.len() != self.header.len() {
            let hint = if rec.len() < self.header.len() {
                " (truncated or malformed row)"
            } else {
                " (unquoted separator or malformed row)"
            };
            return Err(self.reject(
                index,
                line,
                None,
                format!(
                    "expected {} fields, found {}{hint}",
                    self.header.len(),
                    rec.len()
                ),
            ));
        }
        // Size and encoding of every field, before anything is interpreted. Fast path: the
        // whole record is valid UTF-8 without a NUL byte and every field starts on a character
        // boundary (then each field is valid), checked once; otherwise field by field, for the
        // message. A NUL is never part of a GUIDE value: stored, it would cut strings short in
        // whatever C code reads them next.
        let whole = std::str::from_utf8(rec.as_slice()).ok().filter(|all| {
            (0..rec.len()).all(|i| rec.range(i).is_some_and(|r| all.get(r).is_some()))
        });
        let fields_ok = whole.is_some()
            && memchr::memchr(0, rec.as_slice()).is_none()
            && rec.iter().all(|f| f.len() <= self.max_field);
        let slow_check = if fields_ok { 0 } else { rec.len() };
        for (i, f) in rec.iter().enumerate().take(slow_check) {
            if f.len() > self.max_field {
                return Err(self.reject(
                    index,
                    line,
                    Some(i),
                    format!(
                        "field of {} bytes exceeds the limit of {} bytes",
                        f.len(),
                        self.max_field
                    ),
                ));
            }
            if let Err(e) = std::str::from_utf8(f) {
                return Err(self.reject(
                    index,
                    line,
                    Some(i),
                    format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                ));
            }
            if let Some(at) = memchr::memchr(0, f) {
                return Err(self.reject(index, line, Some(i), format!("NUL byte at byte {at}")));
            }
        }
        let text = |i: usize| -> &str {
            // Validated above; an empty string can only come from an impossible index.
            match whole {
                Some(all) => rec.range(i).and_then(|r| all.get(r)),
                None => rec.get(i).and_then(|f| std::str::from_utf8(f).ok()),
            }
            .unwrap_or("")
            .trim()
        };
        let opt_text = |i: Option<usize>| -> Option<String> {
            i.map(text).filter(|s| !s.is_empty()).map(str::to_string)
        };
        let int = |i: usize| -> Result<u64, Rejection> {
            let s = text(i);
            if s.is_empty() {
                return Err(self.reject(
                    index,
                    line,
                    Some(i),
                    "empty value (integer required)".into(),
                ));
            }
            parse_code(s).ok_or_else(|| {
                self.reject(
                    index,
                    line,
                    Some(i),
                    format!("not a non-negative integer: {:?}", truncate(s, 40)),
                )
            })
        };
        let nonempty = |i: usize| -> Result<String, Rejection> {
            let s = text(i);
            if s.is_empty() {
                Err(self.reject(index, line, Some(i), "empty value".into()))
            } else {
                Ok(s.to_string())
            }
        };
        let c = &self.cols;
        let id = int(c.id)?;
        let tenant = TenantId(int(c.org)?);
        if let Some(only) = self.only_tenant.filter(|&t| t != tenant.0) {
            return Err(self.reject(
                index,
                line,
                Some(c.org),
                format!("tenant {} is not this key's tenant {only}", tenant.0),
            ));
        }
        let incident = IncidentId(int(c.incident)?);
        // one id rule for every reader (domain docs): a given id never names a correlated
        // threat nor meets one's training id
        if incident.0 >= GIVEN_ID_LIMIT {
            return Err(self.reject(index, line, Some(c.incident), RESERVED_ID_REASON.into()));
        }
        let alert = AlertId(int(c.alert)?);
        let timestamp = parse_rfc3339(text(c.timestamp))
            .map_err(|e| self.reject(index, line, Some(c.timestamp), e))?;
        let detector = nonempty(c.detector)?;
        let title = nonempty(c.title)?;
        let category = nonempty(c.category)?;
        let entity_type = nonempty(c.entity_type)?;
        let impacted = match text(c.role) {
            "Impacted" => true,
            "Related" => false,
            other => {
                return Err(self.reject(
                    index,
                    line,
                    Some(c.role),
                    format!(
                        "expected Impacted or Related, found {:?}",
                        truncate(other, 40)
                    ),
                ))
            }
        };
        let techniques = match c.techniques {
            Some(i) => {
                parse_techniques(text(i)).map_err(|e| self.reject(index, line, Some(i), e))?
            }
            None => Vec::new(),
        };
        let grade = match c.grade {
            Some(i) => match text(i) {
                "" => None,
                s => Some(Grade::parse(s).ok_or_else(|| {
                    self.reject(
                        index,
                        line,
                        Some(i),
                        format!(
                            "unknown grade {:?} (expected TruePositive, BenignPositive or FalsePositive)",
                            truncate(s, 40)
                        ),
                    )
                })?),
            },
            None => None,
        };
        let mut entities = Entities::default();
        for (slot, col) in entities.codes.iter_mut().zip(c.entities) {
            if let Some(i) = col {
                if !text(i).is_empty() {
                    *slot = Some(int(i)?);
                }
            }
        }
        Ok(Evidence {
            record: index,
            id,
            tenant,
            incident,
            incident_given: true,
            alert,
            timestamp,
            detector,
            title,
            category,
            techniques,
            grade,
            entity_type,
            impacted,
            entities,
            suspicion_level: opt_text(c.suspicion),
            last_verdict: opt_text(c.verdict),
            threat_family: opt_text(c.family),
            antispam_direction: opt_text(c.antispam),
            roles: opt_text(c.roles),
            severity: None,
        })
    }
}

/// Parses an integer code. Integer-valued decimals (`4192202772.0`, as pandas writes a column
/// that holds empty cells) are accepted as the integer they spell; anything else is `None`.
pub(crate) fn parse_code(s: &str) -> Option<u64> {
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let (int, frac) = s.split_once('.')?;
    if int.is_empty() || frac.is_empty() || !frac.bytes().all(|b| b == b'0') {
        return None;
    }
    int.parse::<u64>().ok()
}

/// Parses `T1078;T1078.004` into technique ids; errors name the bad token.
pub(crate) fn parse_techniques(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for tok in s.split([';', ',']) {
        let tok = tok.trim();
        if tok.is_empty() {
            continue;
        }
        if !is_technique_id(tok) {
            return Err(format!(
                "not an ATT&CK technique id: {:?} (expected like T1566 or T1566.002)",
                truncate(tok, 40)
            ));
        }
        if !out.iter().any(|t: &String| t == tok) {
            out.push(tok.to_string());
        }
    }
    Ok(out)
}

fn is_technique_id(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    match b.len() {
        5 => b[0] == b'T' && digits(&b[1..5]),
        9 => b[0] == b'T' && digits(&b[1..5]) && b[5] == b'.' && digits(&b[6..9]),
        _ => false,
    }
}

pub(crate) fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl<R: Read> RawState<R> {
    /// Reads the next record's raw fields into `rec`: its index and either its line (to be
    /// parsed) or a rejection decided while reading (unterminated quote, I/O error). `None` at
    /// the end of the input. Blank lines are skipped.
    fn read_raw(
        &mut self,
        parser: &GuideParser,
        rec: &mut ByteRecord,
    ) -> Option<(u64, Result<u64, Rejection>)> {
        if self.done {
            return None;
        }
        loop {
            let res = self.inner.read_byte_record(rec);
            let start = rec.position().map_or(0, |p| p.byte());
            let end = self.inner.position().byte();
            let span = self.events.take_span(start, end);
            self.lines_before += span.lines_before;
            // Our own line count: csv's counts a CRLF file's lines short and bare-CR files not
            // at all.
            let line = self.lines_before + 1;
            self.lines_before += span.lines_inside;
            let index = self.index;
            let item = match res {
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Ok(true) => {
                    // A blank line inside the file is not a record.
                    if rec.len() == 1 && rec.get(0).is_some_and(|f| f.is_empty()) {
                        continue;
                    }
                    if span.quotes % 2 == 1 && self.events.at_eof(end) {
                        // csv accepts end of file inside a quoted field; we do not.
                        let swallowed = span.lines_inside.saturating_sub(1);
                        Err(parser.reject(
                            index,
                            line,
                            None,
                            format!(
                                "unterminated quoted field: the record runs to the end of the file{}",
                                if swallowed > 0 {
                                    format!(" ({swallowed} more lines read as part of it)")
                                } else {
                                    String::new()
                                }
                            ),
                        ))
                    } else {
                        Ok(line)
                    }
                }
                Err(e) => {
                    // I/O failure mid-file: report it as this record's rejection and stop.
                    self.done = true;
                    Err(parser.reject(index, line, None, format!("read error: {e}")))
                }
            };
            self.index += 1;
            return Some((index, item));
        }
    }
}

impl<R: Read> Iterator for GuideReader<R> {
    type Item = RecordResult;

    fn next(&mut self) -> Option<RecordResult> {
        // Records a batch read ahead come first.
        if let Some(b) = self.ahead.as_mut() {
            if !b.meta.is_empty() {
                let (index, r) = b.meta.remove(0);
                let rec = b.recs.remove(0);
                if b.meta.is_empty() {
                    self.ahead = None;
                }
                return Some(
                    r.and_then(|line| self.parser.parse(&rec, line, index).map(|e| vec![e])),
                );
            }
            self.ahead = None;
        }
        let mut rec = std::mem::take(&mut self.record);
        let out = self.raw.read_raw(&self.parser, &mut rec).map(|(index, r)| {
            r.and_then(|line| self.parser.parse(&rec, line, index).map(|e| vec![e]))
        });
        self.record = rec;
        out
    }
}

/// Byte offsets of line ends and double quotes seen by [`Tracked`], drained record by record
/// (so it holds at most the csv reader's look-ahead), plus end-of-input state.
#[derive(Debug, Clone, Default)]
struct Events(std::sync::Arc<std::sync::Mutex<EventLog>>);

#[derive(Debug, Default)]
struct EventLog {
    /// (offset, what) in increasing offset order
    queue: std::collections::VecDeque<(u64, Event)>,
    eof: bool,
    total: u64,
}

/// A byte [`Tracked`] logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// `"`
    Quote,
    /// the end of a line holding something
    LineEnd,
    /// the end of an empty line (csv skips those before a record, within the record's span)
    BlankLineEnd,
}

/// What lies before and inside one record's byte span.
struct Span {
    lines_before: u64,
    lines_inside: u64,
    quotes: u64,
}

impl Events {
    fn lock(&self) -> std::sync::MutexGuard<'_, EventLog> {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drains events before `end`, counting line ends before `start` and inside the span.
    fn take_span(&self, start: u64, end: u64) -> Span {
        let mut log = self.lock();
        let mut span = Span {
            lines_before: 0,
            lines_inside: 0,
            quotes: 0,
        };
        // Empty lines csv skipped before the record lie inside its span but before its line.
        let mut leading = true;
        while let Some(&(off, event)) = log.queue.front() {
            if off >= end {
                break;
            }
            log.queue.pop_front();
            if off < start {
                if event != Event::Quote {
                    span.lines_before += 1;
                }
                continue;
            }
            match event {
                Event::BlankLineEnd if leading => span.lines_before += 1,
                Event::Quote => {
                    leading = false;
                    span.quotes += 1;
                }
                Event::LineEnd | Event::BlankLineEnd => {
                    leading = false;
                    span.lines_inside += 1;
                }
            }
        }
        span
    }

    fn at_eof(&self, end: u64) -> bool {
        let log = self.lock();
        log.eof && end >= log.total
    }
}

/// Reader wrapper that logs line ends (`\n`, `\r\n` once, lone `\r`; whether the line they end
/// is empty) and `"` bytes by offset.
struct Tracked<R> {
    inner: R,
    events: Events,
    offset: u64,
    /// the last byte read so far, if any
    last: Option<u8>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = &buf[..n];
        let mut log = self.events.lock();
        for i in memchr::memchr3_iter(b'\n', b'\r', b'"', data) {
            let off = self.offset + i as u64;
            let before = match i {
                0 => self.last,
                _ => Some(data[i - 1]),
            };
            // a line is empty when it starts the input or follows another line end
            let line_end = || match before {
                None | Some(b'\n' | b'\r') => Event::BlankLineEnd,
                Some(_) => Event::LineEnd,
            };
            match data[i] {
                // "\r\n" was counted at the '\r'.
                b'\n' if before == Some(b'\r') => {}
                b'\n' | b'\r' => log.queue.push_back((off, line_end())),
                _ => log.queue.push_back((off, Event::Quote)),
            }
        }
        if let Some(&last) = data.last() {
            self.last = Some(last);
        }
        self.offset += n as u64;
        log.total = self.offset;
        if n == 0 && !buf.is_empty() {
            log.eof = true;
        }
        Ok(n)
    }
}

impl<R: Read + Send> RecordSource for GuideReader<R> {
    fn file_name(&self) -> &str {
        &self.parser.file
    }

    fn next_batch(&mut self, max: usize) -> Vec<RecordResult> {
        GuideReader::next_batch(self, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(parse_code("42"), Some(42));
        assert_eq!(parse_code("4192202772.0"), Some(4_192_202_772));
        assert_eq!(parse_code("7.000"), Some(7));
        assert_eq!(parse_code("7.5"), None);
        assert_eq!(parse_code(".0"), None);
        assert_eq!(parse_code("7."), None);
        assert_eq!(parse_code("-1"), None);
        assert_eq!(parse_code("1e3"), None);
    }

    #[test]
    fn record_indices_count_past_u32_max() {
        let csv = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/datasets/guide/guide_sample.csv"
        ))
        .unwrap();
        // the header and two data rows, then a row with one field too few
        let mut lines = csv.lines();
        let head: Vec<&str> = lines.by_ref().take(3).collect();
        let short = lines.next().unwrap().rsplit_once(',').unwrap().0;
        let input = format!("{}\n{short}\n", head.join("\n"));
        let params = crate::ingest::IngestParams::default().check().unwrap();
        let mut r = GuideReader::new(input.as_bytes(), "x.csv", &params).unwrap();
        // as after u32::MAX records
        r.raw.index = u64::from(u32::MAX);
        let first = r.next().unwrap().unwrap();
        let second = r.next().unwrap().unwrap();
        let rejected = r.next().unwrap().unwrap_err();
        assert_eq!(first[0].record, u64::from(u32::MAX));
        assert_eq!(second[0].record, u64::from(u32::MAX) + 1);
        assert_eq!(rejected.record, u64::from(u32::MAX) + 2);
    }

    #[test]
    fn techniques() {
        assert_eq!(
            parse_techniques("T1078;T1078.004; T1078").unwrap(),
            vec!["T1078", "T1078.004"]
        );
        assert!(parse_techniques("").unwrap().is_empty());
        assert!(parse_techniques("T10;").is_err());
        assert!(parse_techniques("X1078").is_err());
    }
}
