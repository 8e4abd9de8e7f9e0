//! Native JSONL alerts: one alert per line, for pipelines that are not GUIDE-shaped.
//!
//! ```text
//! {"tenant": 42, "alert_id": 7001, "incident_id": 9, "timestamp": "2024-06-06T17:32:50Z",
//!  "detector": "EDR-credential-dump", "title": "LSASS memory read", "category": "CredentialAccess",
//!  "techniques": ["T1003.001"], "severity": "high",
//!  "entities": [{"type": "Machine", "role": "Impacted", "value": "host-17"},
//!               {"type": "User", "role": "Related", "value": 4411}],
//!  "grade": "TruePositive", "id": 123}
//! ```
//! (shown wrapped; in a file each alert is on one line). Required: `tenant`, `alert_id`,
//! `timestamp`, `detector`, `title`, `category`. Optional: `incident_id` (absent: `correlate`
//! links the alert with others sharing a strong entity; ids ≥ 2^62 are reserved, in every format), `techniques`, `severity` (informational|low|medium|high|critical),
//! `entities` (`type`, `role` Impacted|Related, `value` string or integer), `grade` (read only
//! when labels are read), `id` (echoed in score output; default the line number). Unknown fields
//! are rejected so that a typo never goes unnoticed. Each entity becomes one [`Evidence`] (an
//! alert with no entity gives one evidence with entity type `None`). Entity values are mapped to
//! the GUIDE entity column matching their type; strings are hashed (FNV-1a 64) into codes.
//! Blank lines are not records.

use super::guide::{parse_techniques, truncate};
use super::time::parse_rfc3339;
use super::{IngestError, IngestValidParams, RecordResult, RecordSource, Rejection};
use crate::domain::{
    AlertId, Entities, Evidence, Grade, IncidentId, Severity, TenantId, ENTITY_COLUMNS,
    GIVEN_ID_LIMIT, RESERVED_ID_REASON,
};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read};

/// One native alert line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeAlert {
    /// tenant id
    pub tenant: u64,
    /// alert id
    pub alert_id: u64,
    /// incident id, if the source already grouped alerts
    #[serde(default)]
    pub incident_id: Option<u64>,
    /// RFC 3339 time
    pub timestamp: String,
    /// detector identity
    pub detector: String,
    /// alert title
    pub title: String,
    /// category (GUIDE vocabulary preferred, e.g. `InitialAccess`)
    pub category: String,
    /// ATT&CK technique ids
    #[serde(default)]
    pub techniques: Vec<String>,
    /// severity
    #[serde(default)]
    pub severity: Option<Severity>,
    /// entities
    #[serde(default)]
    pub entities: Vec<NativeEntity>,
    /// analyst grade (training only)
    #[serde(default)]
    pub grade: Option<String>,
    /// caller's id, echoed in output
    #[serde(default)]
    pub id: Option<u64>,
}

/// One entity of a native alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeEntity {
    /// entity type, GUIDE vocabulary (`Ip`, `User`, `Machine`, `File`, `Url`, …)
    #[serde(rename = "type")]
    pub entity_type: String,
    /// `Impacted` or `Related`
    #[serde(default = "related")]
    pub role: String,
    /// identifier: an integer code or any string
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

fn related() -> String {
    "Related".into()
}

/// Streaming JSONL reader: one item per non-blank line.
pub struct NativeReader<R: Read> {
    file: String,
    inner: BufReader<R>,
    buf: Vec<u8>,
    line: u64,
    index: u64,
    max_line: usize,
    read_labels: bool,
    only_tenant: Option<u64>,
    max_entities: usize,
    max_text: usize,
    done: bool,
}

impl<R: Read> NativeReader<R> {
    /// Starts reading; errors on an empty input.
    pub fn new(reader: R, file: &str, params: &IngestValidParams) -> Result<Self, IngestError> {
        let mut inner = BufReader::with_capacity(1 << 16, reader);
        let empty = inner
            .fill_buf()
            .map_err(|source| IngestError::Io {
                file: file.to_string(),
                source,
            })?
            .is_empty();
        if empty {
            return Err(IngestError::Empty {
                file: file.to_string(),
            });
        }
        let p = params.get();
        Ok(Self {
            file: file.to_string(),
            inner,
            buf: Vec::new(),
            line: 0,
            index: 0,
            max_line: p.max_field_bytes,
            read_labels: p.read_labels,
            only_tenant: p.only_tenant,
            max_entities: p.max_entities_per_alert,
            max_text: p.max_text_bytes,
            done: false,
        })
    }

    fn reject(&self, column: Option<&str>, reason: String) -> Rejection {
        Rejection {
            file: self.file.clone(),
            line: self.line,
            record: self.index,
            column: column.map(str::to_string),
            reason,
        }
    }

    /// JSON text → [`NativeAlert`], field by field, so that every rejection names its field.
    fn decode(&self, text: &str) -> Result<NativeAlert, Rejection> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| self.reject(None, format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(mut obj) = value else {
            return Err(self.reject(
                None,
                format!(
                    "an alert must be a JSON object, found {}",
                    json_kind(&value)
                ),
            ));
        };
        if !self.read_labels {
            // Scoring never looks at the label, not even at its type.
            obj.remove("grade");
        }
        if let Some(k) = obj.keys().find(|k| !ALERT_FIELDS.contains(&k.as_str())) {
            return Err(self.reject(
                Some(k),
                format!(
                    "unknown field (expected one of {})",
                    ALERT_FIELDS.join(", ")
                ),
            ));
        }
        for k in REQUIRED_FIELDS {
            if obj.get(k).is_none_or(serde_json::Value::is_null) {
                return Err(self.reject(Some(k), "missing required field".into()));
            }
        }
        // Each field alone, in a fixed order, so the first bad one is named.
        for k in ALERT_FIELDS {
            if let Some(v) = obj.get(k) {
                let mut one = serde_json::Map::new();
                for r in REQUIRED_FIELDS {
                    one.insert(r.to_string(), placeholder(r));
                }
                one.insert(k.to_string(), v.clone());
                if let Err(e) =
                    serde_json::from_value::<NativeAlert>(serde_json::Value::Object(one))
                {
                    return Err(self.reject(Some(k), format!("invalid value: {e}")));
                }
            }
        }
        serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| self.reject(None, format!("invalid alert: {e}")))
    }

    fn parse(&self, text: &str) -> Result<Vec<Evidence>, Rejection> {
        let a = self.decode(text)?;
        if let Some(only) = self.only_tenant.filter(|&t| t != a.tenant) {
            return Err(self.reject(
                Some("tenant"),
                format!("tenant {} is not this key's tenant {only}", a.tenant),
            ));
        }
        // From 2^62 up, ids name correlated candidate threats and their training ids (domain
        // docs: one rule for every reader).
        let reserved = RESERVED_ID_REASON;
        match a.incident_id {
            Some(i) if i >= GIVEN_ID_LIMIT => {
                return Err(self.reject(Some("incident_id"), reserved.into()))
            }
            None if a.alert_id >= GIVEN_ID_LIMIT => {
                return Err(self.reject(
                    Some("alert_id"),
                    format!("{reserved} (on an alert without incident_id)"),
                ))
            }
            _ => {}
        }
        let timestamp =
            parse_rfc3339(&a.timestamp).map_err(|e| self.reject(Some("timestamp"), e))?;
        // bounded expansion: each entity becomes an evidence row carrying the alert's texts
        if a.entities.len() > self.max_entities {
            return Err(self.reject(
                Some("entities"),
                format!(
                    "{} entities, over the limit of {} per alert",
                    a.entities.len(),
                    self.max_entities
                ),
            ));
        }
        let texts = [
            ("detector", a.detector.as_str()),
            ("title", a.title.as_str()),
            ("category", a.category.as_str()),
        ]
        .into_iter()
        .chain(a.techniques.iter().map(|t| ("techniques", t.as_str())))
        .chain(a.entities.iter().flat_map(|e| {
            let value = match &e.value {
                Some(serde_json::Value::String(s)) => s.as_str(),
                _ => "",
            };
            [
                ("entities.type", e.entity_type.as_str()),
                ("entities.value", value),
            ]
        }));
        for (name, v) in texts {
            if let Some(at) = v.find('\0') {
                return Err(self.reject(Some(name), format!("NUL character at byte {at}")));
            }
            if v.len() > self.max_text {
                return Err(self.reject(
                    Some(name),
                    format!(
                        "{} bytes, over the limit of {} per text value",
                        v.len(),
                        self.max_text
                    ),
                ));
            }
        }
        for (name, v) in [
            ("detector", &a.detector),
            ("title", &a.title),
            ("category", &a.category),
        ] {
            if v.trim().is_empty() {
                return Err(self.reject(Some(name), "empty value".into()));
            }
        }
        let techniques = parse_techniques(&a.techniques.join(";"))
            .map_err(|e| self.reject(Some("techniques"), e))?;
        let grade = match (&a.grade, self.read_labels) {
            (Some(g), true) if !g.is_empty() => Some(Grade::parse(g).ok_or_else(|| {
                self.reject(
                    Some("grade"),
                    format!("unknown grade {:?}", truncate(g, 40)),
                )
            })?),
            _ => None,
        };
        let base = Evidence {
            record: self.index,
            id: a.id.unwrap_or(self.line),
            tenant: TenantId(a.tenant),
            incident: IncidentId(a.incident_id.unwrap_or(a.alert_id)),
            incident_given: a.incident_id.is_some(),
            alert: AlertId(a.alert_id),
            timestamp,
            detector: a.detector.trim().to_string(),
            title: a.title.trim().to_string(),
            category: a.category.trim().to_string(),
            techniques,
            grade,
            entity_type: "None".into(),
            impacted: false,
            entities: Entities::default(),
            suspicion_level: None,
            last_verdict: None,
            threat_family: None,
            antispam_direction: None,
            roles: None,
            severity: a.severity,
        };
        if a.entities.is_empty() {
            return Ok(vec![base]);
        }
        let mut out = Vec::with_capacity(a.entities.len());
        for (k, ent) in a.entities.iter().enumerate() {
            let impacted = match ent.role.as_str() {
                "Impacted" | "impacted" => true,
                "Related" | "related" => false,
                other => {
                    return Err(self.reject(
                        Some("entities.role"),
                        format!(
                            "entity {k}: expected Impacted or Related, found {:?}",
                            truncate(other, 40)
                        ),
                    ))
                }
            };
            if ent.entity_type.trim().is_empty() {
                return Err(self.reject(Some("entities.type"), format!("entity {k}: empty type")));
            }
            let mut ev = base.clone();
            ev.entity_type = ent.entity_type.trim().to_string();
            ev.impacted = impacted;
            if let Some(slot) = entity_slot(&ev.entity_type) {
                let code = match &ent.value {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::Number(n)) => match n.as_u64() {
                        Some(v) => Some(v),
                        None => Some(fnv1a(n.to_string().as_bytes())),
                    },
                    Some(serde_json::Value::String(s)) => Some(fnv1a(s.as_bytes())),
                    Some(_) => {
                        return Err(self.reject(
                            Some("entities.value"),
                            format!("entity {k}: value must be a string or an integer"),
                        ))
                    }
                };
                ev.entities.codes[slot] = code;
            }
            out.push(ev);
        }
        Ok(out)
    }
}

/// Fields of a native alert, in checking order.
const ALERT_FIELDS: [&str; 12] = [
    "tenant",
    "alert_id",
    "incident_id",
    "timestamp",
    "detector",
    "title",
    "category",
    "techniques",
    "severity",
    "entities",
    "grade",
    "id",
];

/// Fields every alert must carry.
const REQUIRED_FIELDS: [&str; 6] = [
    "tenant",
    "alert_id",
    "timestamp",
    "detector",
    "title",
    "category",
];

/// A valid stand-in for a required field, used to check one other field alone.
fn placeholder(field: &str) -> serde_json::Value {
    match field {
        "tenant" | "alert_id" => serde_json::Value::from(0u64),
        _ => serde_json::Value::from("x"),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The top-level field of a JSON object line whose text satisfies `pred` (to name the field
/// of a bad-UTF-8 or oversize line); `None` when the line is not an object.
fn locate_field(text: &str, pred: impl Fn(&str, &str) -> bool) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let obj = v.as_object()?;
    obj.iter()
        .find(|(k, v)| pred(k, &v.to_string()))
        .map(|(k, _)| k.clone())
}

/// FNV-1a 64-bit hash (stable across runs and platforms).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// GUIDE entity column that holds an entity of this type.
fn entity_slot(entity_type: &str) -> Option<usize> {
    let col = match entity_type {
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
    };
    ENTITY_COLUMNS.iter().position(|c| *c == col)
}

impl<R: Read> Iterator for NativeReader<R> {
    type Item = RecordResult;

    fn next(&mut self) -> Option<RecordResult> {
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            let n = match self.inner.read_until(b'\n', &mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    self.line += 1;
                    let r = self.reject(None, format!("read error: {e}"));
                    self.index += 1;
                    return Some(Err(r));
                }
            };
            if n == 0 {
                self.done = true;
                return None;
            }
            self.line += 1;
            let raw = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            // A BOM is not content: a first line holding only one is blank too.
            let raw = if self.line == 1 {
                raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(raw)
            } else {
                raw
            };
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let item = if raw.len() > self.max_line {
                let text = String::from_utf8_lossy(raw);
                let max = self.max_line;
                let field = locate_field(&text, |_, v| v.len() > max / 2);
                Err(self.reject(
                    field.as_deref(),
                    format!(
                        "line of {} bytes exceeds the limit of {} bytes",
                        raw.len(),
                        self.max_line
                    ),
                ))
            } else {
                match std::str::from_utf8(raw) {
                    Err(e) => {
                        let text = String::from_utf8_lossy(raw);
                        let field = locate_field(&text, |k, v| {
                            k.contains('\u{fffd}') || v.contains('\u{fffd}')
                        });
                        Err(self.reject(
                            field.as_deref(),
                            format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
                        ))
                    }
                    Ok(text) => self.parse(text),
                }
            };
            self.index += 1;
            return Some(item);
        }
    }
}

impl<R: Read> RecordSource for NativeReader<R> {
    fn file_name(&self) -> &str {
        &self.file
    }
}
