//! The service's state in one SQLite file: API keys (SHA-256 only), evidence, scored threats and
//! the append-only verdict audit log.
//!
//! WAL mode with `synchronous=FULL`: a transaction is on disk when its commit returns, so a
//! verdict answered with 2xx survives `kill -9` (and power loss). Every statement names the
//! tenant: no query here can return or change another tenant's rows. Updates and deletes of
//! `verdicts` are refused by triggers, whatever the caller.

use crate::domain::{Evidence, Grade, IncidentId, CORRELATED_INCIDENT_BIT};
use crate::rank::ScoredIncident;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Database errors, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed
    #[error("{file}: {source}")]
    Sqlite {
        /// database file
        file: String,
        /// cause
        #[source]
        source: rusqlite::Error,
    },
    /// stored data does not decode (a bug, or a file edited by hand)
    #[error("{file}: corrupt {what}: {reason}")]
    Corrupt {
        /// database file
        file: String,
        /// which record
        what: String,
        /// why
        reason: String,
    },
    /// a key operation refers to nothing
    #[error("{file}: {reason}")]
    Key {
        /// database file
        file: String,
        /// why
        reason: String,
    },
    /// the OS random source failed
    #[error("cannot read /dev/urandom for a new key: {0}")]
    Random(#[source] std::io::Error),
    /// creating the database file
    #[error("{file}: cannot create: {source}")]
    Create {
        /// database file
        file: String,
        /// cause
        #[source]
        source: std::io::Error,
    },
}

/// Layout version stored in `meta`; a file of another version is refused.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys(
  id INTEGER PRIMARY KEY,
  hash BLOB NOT NULL UNIQUE,
  tenant INTEGER NOT NULL,
  label TEXT NOT NULL,
  created INTEGER NOT NULL,
  revoked INTEGER
);
CREATE TABLE IF NOT EXISTS evidence(
  seq INTEGER PRIMARY KEY,
  tenant INTEGER NOT NULL,
  incident INTEGER NOT NULL,
  given INTEGER NOT NULL,
  threat INTEGER NOT NULL,
  ts INTEGER NOT NULL,
  digest BLOB NOT NULL,
  body TEXT NOT NULL,
  UNIQUE(tenant, digest)
);
CREATE INDEX IF NOT EXISTS evidence_incident ON evidence(tenant, given, incident);
CREATE INDEX IF NOT EXISTS evidence_threat ON evidence(tenant, threat);
CREATE INDEX IF NOT EXISTS evidence_loose_time ON evidence(tenant, given, ts);
CREATE TABLE IF NOT EXISTS threats(
  tenant INTEGER NOT NULL,
  id INTEGER NOT NULL,
  ord INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  p_tp REAL NOT NULL,
  predicted TEXT NOT NULL,
  tactics TEXT NOT NULL,
  scored_at INTEGER NOT NULL,
  model TEXT NOT NULL,
  body TEXT NOT NULL,
  features BLOB NOT NULL,
  explained INTEGER NOT NULL,
  PRIMARY KEY(tenant, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS threats_queue ON threats(tenant, priority DESC, p_tp DESC, ord);
CREATE INDEX IF NOT EXISTS threats_recent ON threats(tenant, scored_at);
CREATE TABLE IF NOT EXISTS verdicts(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  tenant INTEGER NOT NULL,
  threat INTEGER NOT NULL,
  grade TEXT NOT NULL,
  reason TEXT,
  analyst TEXT NOT NULL,
  key_id INTEGER NOT NULL,
  at INTEGER NOT NULL,
  predicted TEXT NOT NULL,
  from_threat INTEGER,
  from_seq INTEGER,
  tenant_seq INTEGER
);
CREATE INDEX IF NOT EXISTS verdicts_threat ON verdicts(tenant, threat, seq);
CREATE TRIGGER IF NOT EXISTS verdicts_no_update BEFORE UPDATE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are an append-only audit log'); END;
CREATE TRIGGER IF NOT EXISTS verdicts_no_delete BEFORE DELETE ON verdicts
BEGIN SELECT RAISE(ABORT, 'verdicts are an append-only audit log'); END;
";

/// Threat ids are u64 (correlated ones have the top bit set); SQLite integers are i64: stored
/// bit for bit.
pub fn id_to_sql(id: u64) -> i64 {
    id as i64
}

/// Inverse of [`id_to_sql`].
pub fn id_from_sql(v: i64) -> u64 {
    v as u64
}

/// An i64 whose order is the u64 order of the id (the queue's last tie-break).
fn id_order(id: u64) -> i64 {
    (id ^ CORRELATED_INCIDENT_BIT) as i64
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// SHA-256 of an API key: what the database stores.
pub fn key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The caller behind a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// key row id
    pub id: i64,
    /// tenant the key belongs to
    pub tenant: u64,
    /// who holds it (recorded as the analyst of verdicts)
    pub label: String,
    /// creation time
    pub created: i64,
    /// revocation time
    pub revoked: Option<i64>,
}

/// One stored verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    /// position in the audit log (all tenants; never shown to a tenant)
    pub seq: i64,
    /// position among its tenant's verdicts, from 1 (what the API shows: one tenant's numbers
    /// say nothing of another's activity)
    pub tenant_seq: i64,
    /// threat id
    pub threat: u64,
    /// the analyst's grade
    pub grade: Grade,
    /// optional reason
    pub reason: Option<String>,
    /// the key label that recorded it
    pub analyst: String,
    /// seconds since the epoch
    pub at: i64,
    /// the engine's grade when the analyst decided
    pub predicted: Grade,
    /// when the verdict was given on another threat that later merged into this one (a later
    /// alert correlated them): that threat's id. The copy keeps the grade, reason, analyst and
    /// time; the original stays in the audit log under the old id.
    pub from_threat: Option<u64>,
}

/// One stored threat: the scored incident, its feature row and when/which model scored it.
#[derive(Debug, Clone)]
pub struct StoredThreat {
    /// scored incident (reasons, actor, tactics …)
    pub scored: ScoredIncident,
    /// feature row
    pub features: Vec<f32>,
    /// seconds since the epoch
    pub scored_at: i64,
    /// SHA-256 of the artifact that scored it
    pub model: String,
    /// whether `scored.reasons`/`families` were computed (exact TreeSHAP costs far more than
    /// scoring, so a pushed batch scores without them and the first read explains)
    pub explained: bool,
}

/// Queue filters.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    /// ATT&CK tactic name
    pub tactic: Option<String>,
    /// predicted grade
    pub grade: Option<Grade>,
    /// `Some(true)` only verdicted, `Some(false)` only open, `None` all
    pub verdicted: Option<bool>,
    /// only threats at or above this priority
    pub min_priority: Option<u8>,
    /// leave out threats whose latest verdict is BP or FP (an analyst dismissed them)
    pub exclude_dismissed: bool,
}

/// Recently scored threats: (feature row, P(TP)) each, and how many tenants they come from.
#[derive(Debug, Clone, Default)]
pub struct Population {
    /// feature row and calibrated P(TP) per threat, newest first
    pub rows: Vec<(Vec<f32>, f32)>,
    /// how many tenants they come from, and the largest one's share
    pub spread: Spread,
}

/// How many tenants a set of rows comes from, and how many rows the largest one holds: what
/// the global drift view's floor and dominance rule read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spread {
    /// distinct tenants
    pub tenants: u64,
    /// rows in all
    pub rows: u64,
    /// rows of the tenant holding the most
    pub max_tenant_rows: u64,
}

impl Spread {
    /// The spread of rows tagged with these tenants.
    pub fn of(tenants: impl IntoIterator<Item = u64>) -> Spread {
        let mut per: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
        for t in tenants {
            *per.entry(t).or_default() += 1;
        }
        Spread {
            tenants: per.len() as u64,
            rows: per.values().sum(),
            max_tenant_rows: per.values().copied().max().unwrap_or(0),
        }
    }

    /// The largest tenant's share of the rows (0 without rows).
    pub fn max_share(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            self.max_tenant_rows as f64 / self.rows as f64
        }
    }
}

/// What a batch must score again: stored evidence rows and the ids of the candidate threats
/// (of loose alerts) they belonged to.
#[derive(Debug, Clone, Default)]
pub struct Rescoring {
    /// `(seq, evidence)` by seq
    pub rows: Vec<(i64, Evidence)>,
    /// candidate-threat ids of the loose rows before re-correlation
    pub touched: Vec<u64>,
}

/// The database: one writer connection and a few readers (WAL lets them read while it writes).
pub struct Db {
    file: String,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("file", &self.file).finish()
    }
}

fn grade_from_sql(file: &str, s: &str) -> Result<Grade, DbError> {
    Grade::parse(s).ok_or_else(|| DbError::Corrupt {
        file: file.to_string(),
        what: "grade".into(),
        reason: format!("{s:?}"),
    })
}

/// Control characters (line breaks, NUL, escapes) and the Unicode text-direction controls
/// (embeddings, overrides, isolates and marks), which make one string display as another.
pub fn unsafe_text_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

impl Db {
    /// Opens (creating when absent) the database at `path` with `readers` read connections.
    pub fn open(path: &Path, readers: usize) -> Result<Db, DbError> {
        let file = path.display().to_string();
        let sql = |source| DbError::Sqlite {
            file: file.clone(),
            source,
        };
        // it holds every tenant's alerts and verdicts: readable by its owner only (SQLite gives
        // its -wal and -shm files the same permissions)
        {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(DbError::Create {
                        file: file.clone(),
                        source,
                    })
                }
            }
        }
        let writer = Self::connect(path).map_err(sql)?;
        writer.execute_batch(SCHEMA).map_err(sql)?;
        let version: Option<String> = writer
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql)?;
        match version {
            None => {
                writer
                    .execute(
                        "INSERT INTO meta(key, value) VALUES ('schema', ?1)",
                        [SCHEMA_VERSION.to_string()],
                    )
                    .map_err(sql)?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            // version 1 had no `verdicts.from_threat`, `from_seq` (verdicts carried into merged
            // threats) nor `tenant_seq` (numbered over all tenants): added, and numbered, in one
            // transaction (the no-update trigger is lifted for that one statement)
            Some(v) if v == "1" => {
                writer
                    .execute_batch(
                        "BEGIN;
                         ALTER TABLE verdicts ADD COLUMN from_threat INTEGER;
                         ALTER TABLE verdicts ADD COLUMN from_seq INTEGER;
                         ALTER TABLE verdicts ADD COLUMN tenant_seq INTEGER;
                         DROP TRIGGER verdicts_no_update;
                         UPDATE verdicts SET tenant_seq = (SELECT COUNT(*) FROM verdicts w
                           WHERE w.tenant = verdicts.tenant AND w.seq <= verdicts.seq);
                         CREATE TRIGGER verdicts_no_update BEFORE UPDATE ON verdicts
                         BEGIN SELECT RAISE(ABORT, 'verdicts are an append-only audit log'); END;
                         UPDATE meta SET value = '2' WHERE key = 'schema';
                         COMMIT;",
                    )
                    .map_err(sql)?;
            }
            Some(v) => {
                return Err(DbError::Corrupt {
                    file,
                    what: "schema version".into(),
                    reason: format!("found {v}, this build reads {SCHEMA_VERSION}"),
                })
            }
        }
        writer
            .execute_batch(
                "CREATE UNIQUE INDEX IF NOT EXISTS verdicts_tenant_seq ON verdicts(tenant, tenant_seq);",
            )
            .map_err(sql)?;
        let mut rs = Vec::new();
        for _ in 0..readers.max(1) {
            let c = Self::connect(path).map_err(sql)?;
            c.execute_batch("PRAGMA query_only = ON;").map_err(sql)?;
            rs.push(Mutex::new(c));
        }
        Ok(Db {
            file,
            writer: Mutex::new(writer),
            readers: rs,
            next: AtomicUsize::new(0),
        })
    }

    fn connect(path: &Path) -> rusqlite::Result<Connection> {
        let c = Connection::open(path)?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )?;
        Ok(c)
    }

    /// The database file, as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    fn sql(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite {
            file: self.file.clone(),
            source,
        }
    }

    fn corrupt(&self, what: &str, reason: impl std::fmt::Display) -> DbError {
        DbError::Corrupt {
            file: self.file.clone(),
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Runs SQL on the writer (tests that need rows no route writes any more).
    #[cfg(test)]
    pub(crate) fn execute_batch_for_tests(&self, sql: &str) -> Result<(), DbError> {
        self.write(|c| c.execute_batch(sql).map_err(|e| self.sql(e)))
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, DbError>) -> Result<T, DbError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let c = self.readers[i].lock().unwrap_or_else(|p| p.into_inner());
        f(&c)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    // ---- keys -------------------------------------------------------------------------------

    /// Makes a new key for `tenant`: returns its row id and the key itself (shown once; only
    /// its SHA-256 is stored). Keys are `trk_` + 64 hex digits of /dev/urandom.
    pub fn add_key(&self, tenant: u64, label: &str) -> Result<(i64, String), DbError> {
        use std::io::Read;
        let mut raw = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .map_err(DbError::Random)?;
        let key = format!("trk_{}", crate::matrix::hex(&raw));
        let label = label.trim();
        if label.is_empty() || label.len() > 200 {
            return Err(DbError::Key {
                file: self.file.clone(),
                reason: "a key label must be 1–200 characters (it names the analyst)".into(),
            });
        }
        // it is printed in `keys list` rows and shown as the analyst of verdicts: a line
        // break would forge rows, a direction override would reorder the text around it
        if let Some(c) = label.chars().find(|&c| unsafe_text_char(c)) {
            return Err(DbError::Key {
                file: self.file.clone(),
                reason: format!(
                    "a key label cannot hold control or text-direction characters (found U+{:04X})",
                    u32::from(c)
                ),
            });
        }
        let id = self.write(|c| {
            c.execute(
                "INSERT INTO api_keys(hash, tenant, label, created) VALUES (?1, ?2, ?3, ?4)",
                params![key_hash(&key), id_to_sql(tenant), label, now()],
            )
            .map_err(|e| self.sql(e))?;
            Ok(c.last_insert_rowid())
        })?;
        Ok((id, key))
    }

    /// Revokes a key by row id (already revoked: unchanged). Errors when there is no such key.
    pub fn revoke_key(&self, id: i64) -> Result<(), DbError> {
        let n = self.write(|c| {
            c.execute(
                "UPDATE api_keys SET revoked = COALESCE(revoked, ?2) WHERE id = ?1",
                params![id, now()],
            )
            .map_err(|e| self.sql(e))
        })?;
        if n == 0 {
            return Err(DbError::Key {
                file: self.file.clone(),
                reason: format!("no key with id {id}"),
            });
        }
        Ok(())
    }

    /// Every key (no secrets: they are not stored).
    pub fn keys(&self) -> Result<Vec<KeyInfo>, DbError> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT id, tenant, label, created, revoked FROM api_keys ORDER BY id")
                .map_err(|e| self.sql(e))?;
            let rows = st
                .query_map([], |r| {
                    Ok(KeyInfo {
                        id: r.get(0)?,
                        tenant: id_from_sql(r.get(1)?),
                        label: r.get(2)?,
                        created: r.get(3)?,
                        revoked: r.get(4)?,
                    })
                })
                .map_err(|e| self.sql(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
        })
    }

    /// The live (not revoked) key with this secret, if any.
    pub fn authenticate(&self, key: &str) -> Result<Option<KeyInfo>, DbError> {
        let hash = key_hash(key);
        self.read(|c| {
            c.query_row(
                "SELECT id, tenant, label, created, revoked FROM api_keys
                 WHERE hash = ?1 AND revoked IS NULL",
                [hash],
                |r| {
                    Ok(KeyInfo {
                        id: r.get(0)?,
                        tenant: id_from_sql(r.get(1)?),
                        label: r.get(2)?,
                        created: r.get(3)?,
                        revoked: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
        })
    }

    // ---- evidence ---------------------------------------------------------------------------

    /// Stores accepted evidence of one tenant (one transaction) and returns how many rows were
    /// new. A row is identified by its content and its occurrence among identical rows of the
    /// batch, so a retried batch stores nothing twice while identical rows within one batch
    /// all count. Rows of another tenant are a bug of the caller and refused.
    pub fn insert_evidence(&self, tenant: u64, rows: &[Evidence]) -> Result<u64, DbError> {
        if let Some(e) = rows.iter().find(|e| e.tenant.0 != tenant) {
            return Err(self.corrupt(
                "evidence",
                format!("row of tenant {} offered for tenant {tenant}", e.tenant.0),
            ));
        }
        let mut seen: std::collections::HashMap<Vec<u8>, u32> = std::collections::HashMap::new();
        let mut prepared = Vec::with_capacity(rows.len());
        for e in rows {
            let mut e = e.clone();
            e.record = 0;
            let body = serde_json::to_string(&e).map_err(|x| self.corrupt("evidence", x))?;
            let content = Sha256::digest(body.as_bytes()).to_vec();
            let n = seen.entry(content.clone()).or_default();
            let mut h = Sha256::new();
            h.update(&content);
            h.update(n.to_le_bytes());
            *n += 1;
            prepared.push((e, body, h.finalize().to_vec()));
        }
        self.write(|c| {
            let tx = c.transaction().map_err(|e| self.sql(e))?;
            let mut added = 0u64;
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO evidence(tenant, incident, given, threat, ts, digest,
                                                        body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(|e| self.sql(e))?;
                for (e, body, digest) in &prepared {
                    added += st
                        .execute(params![
                            id_to_sql(tenant),
                            id_to_sql(e.incident.0),
                            e.incident_given,
                            id_to_sql(e.incident.0),
                            e.timestamp,
                            digest,
                            body
                        ])
                        .map_err(|e| self.sql(e))? as u64;
                }
            }
            tx.commit().map_err(|e| self.sql(e))?;
            Ok(added)
        })
    }

    fn evidence_query(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<(i64, Evidence)>, DbError> {
        self.read(|c| {
            let mut st = c.prepare_cached(sql).map_err(|e| self.sql(e))?;
            let rows = st
                .query_map(args, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(|e| self.sql(e))?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, body) = row.map_err(|e| self.sql(e))?;
                let ev: Evidence = serde_json::from_str(&body)
                    .map_err(|x| self.corrupt(&format!("evidence {seq}"), x))?;
                out.push((seq, ev));
            }
            Ok(out)
        })
    }

    /// Every stored evidence row of these given incidents of one tenant, plus (with
    /// `loose = Some((from, to))`) every row of each candidate threat of alerts without an
    /// incident id that has a row in that time span; `(seq, evidence)` by seq, and the ids those
    /// candidate threats had.
    pub fn evidence_for(
        &self,
        tenant: u64,
        incidents: &[u64],
        loose: Option<(i64, i64)>,
    ) -> Result<Rescoring, DbError> {
        let mut out = Vec::new();
        for &i in incidents {
            out.extend(self.evidence_query(
                "SELECT seq, body FROM evidence WHERE tenant = ?1 AND given = 1 AND incident = ?2
                 ORDER BY seq",
                params![id_to_sql(tenant), id_to_sql(i)],
            )?);
        }
        let mut touched = Vec::new();
        if let Some((from, to)) = loose {
            out.extend(self.evidence_query(
                "SELECT seq, body FROM evidence WHERE tenant = ?1 AND given = 0 AND threat IN
                   (SELECT threat FROM evidence
                    WHERE tenant = ?1 AND given = 0 AND ts BETWEEN ?2 AND ?3)
                 ORDER BY seq",
                params![id_to_sql(tenant), from, to],
            )?);
            touched = self.read(|c| {
                let mut st = c
                    .prepare_cached(
                        "SELECT DISTINCT threat FROM evidence
                         WHERE tenant = ?1 AND given = 0 AND ts BETWEEN ?2 AND ?3",
                    )
                    .map_err(|e| self.sql(e))?;
                let rows = st
                    .query_map(params![id_to_sql(tenant), from, to], |r| r.get::<_, i64>(0))
                    .map_err(|e| self.sql(e))?;
                rows.map(|r| r.map(id_from_sql).map_err(|e| self.sql(e)))
                    .collect::<Result<Vec<u64>, DbError>>()
            })?;
        }
        out.sort_by_key(|(s, _)| *s);
        out.dedup_by_key(|(s, _)| *s);
        Ok(Rescoring { rows: out, touched })
    }

    /// Every evidence row of these threats of one tenant, `(seq, evidence)` by seq.
    pub fn evidence_of_threats(
        &self,
        tenant: u64,
        threats: &[u64],
    ) -> Result<Vec<(i64, Evidence)>, DbError> {
        let mut out = Vec::new();
        for &t in threats {
            out.extend(self.evidence_query(
                "SELECT seq, body FROM evidence WHERE tenant = ?1 AND threat = ?2 ORDER BY seq",
                params![id_to_sql(tenant), id_to_sql(t)],
            )?);
        }
        out.sort_by_key(|(s, _)| *s);
        Ok(out)
    }

    /// The evidence of one threat of one tenant, by seq.
    pub fn threat_evidence(&self, tenant: u64, threat: u64) -> Result<Vec<Evidence>, DbError> {
        Ok(self
            .evidence_of_threats(tenant, &[threat])?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// Evidence rows stored, per tenant or in all.
    pub fn evidence_count(&self, tenant: Option<u64>) -> Result<u64, DbError> {
        self.read(|c| {
            let n: i64 = match tenant {
                Some(t) => c.query_row(
                    "SELECT COUNT(*) FROM evidence WHERE tenant = ?1",
                    [id_to_sql(t)],
                    |r| r.get(0),
                ),
                None => c.query_row("SELECT COUNT(*) FROM evidence", [], |r| r.get(0)),
            }
            .map_err(|e| self.sql(e))?;
            Ok(n as u64)
        })
    }

    // ---- threats ----------------------------------------------------------------------------

    /// Stores newly scored threats of one tenant in one transaction: each row's evidence
    /// (`(seq, threat)`) is pointed at its threat, each threat replaced, and the tenant's
    /// correlated threats listed in `retired` (merged into others) removed.
    pub fn store_scored(
        &self,
        tenant: u64,
        threats: &[StoredThreat],
        evidence_threat: &[(i64, u64)],
        retired: &[u64],
    ) -> Result<(), DbError> {
        if let Some(t) = threats.iter().find(|t| t.scored.key.tenant.0 != tenant) {
            return Err(self.corrupt(
                "threat",
                format!(
                    "threat of tenant {} offered for tenant {tenant}",
                    t.scored.key.tenant.0
                ),
            ));
        }
        let moved: BTreeMap<i64, u64> = evidence_threat.iter().copied().collect();
        self.write(|c| {
            let tx = c.transaction().map_err(|e| self.sql(e))?;
            {
                // Verdicts follow their threat: a retired threat's verdicts are copied, in
                // order and with their time, onto every threat its evidence moves to (the
                // originals stay in the append-only log under the old id).
                let mut seqs = tx
                    .prepare_cached("SELECT seq FROM evidence WHERE tenant = ?1 AND threat = ?2")
                    .map_err(|e| self.sql(e))?;
                let mut carry = tx
                    .prepare_cached(
                        "INSERT INTO verdicts
                         (tenant, threat, grade, reason, analyst, key_id, at, predicted,
                          from_threat, from_seq, tenant_seq)
                         SELECT tenant, ?3, grade, reason, analyst, key_id, at, predicted,
                                COALESCE(from_threat, threat), COALESCE(from_seq, seq),
                                (SELECT COALESCE(MAX(tenant_seq), 0) FROM verdicts
                                 WHERE tenant = ?1) + ROW_NUMBER() OVER (ORDER BY seq)
                         FROM verdicts WHERE tenant = ?1 AND threat = ?2 ORDER BY seq",
                    )
                    .map_err(|e| self.sql(e))?;
                for &old in retired {
                    let rows: Vec<i64> = seqs
                        .query_map(params![id_to_sql(tenant), id_to_sql(old)], |r| r.get(0))
                        .map_err(|e| self.sql(e))?
                        .collect::<Result<_, _>>()
                        .map_err(|e| self.sql(e))?;
                    let to: BTreeSet<u64> = rows
                        .iter()
                        .filter_map(|s| moved.get(s).copied())
                        .filter(|&t| t != old)
                        .collect();
                    for new in to {
                        carry
                            .execute(params![id_to_sql(tenant), id_to_sql(old), id_to_sql(new)])
                            .map_err(|e| self.sql(e))?;
                    }
                }
                let mut up = tx
                    .prepare_cached(
                        "UPDATE evidence SET threat = ?3 WHERE tenant = ?1 AND seq = ?2",
                    )
                    .map_err(|e| self.sql(e))?;
                for &(seq, threat) in evidence_threat {
                    up.execute(params![id_to_sql(tenant), seq, id_to_sql(threat)])
                        .map_err(|e| self.sql(e))?;
                }
                let mut del = tx
                    .prepare_cached("DELETE FROM threats WHERE tenant = ?1 AND id = ?2")
                    .map_err(|e| self.sql(e))?;
                for &id in retired {
                    del.execute(params![id_to_sql(tenant), id_to_sql(id)])
                        .map_err(|e| self.sql(e))?;
                }
                let mut ins = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO threats
                         (tenant, id, ord, priority, p_tp, predicted, tactics, scored_at, model,
                          body, features, explained)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    )
                    .map_err(|e| self.sql(e))?;
                for t in threats {
                    let s = &t.scored;
                    let body = serde_json::to_string(s).map_err(|x| self.corrupt("threat", x))?;
                    let features: Vec<u8> =
                        t.features.iter().flat_map(|v| v.to_le_bytes()).collect();
                    let tactics = format!(",{},", s.tactics.join(","));
                    ins.execute(params![
                        id_to_sql(tenant),
                        id_to_sql(s.key.incident.0),
                        id_order(s.key.incident.0),
                        s.priority,
                        s.probs[0],
                        s.predicted.short(),
                        tactics,
                        t.scored_at,
                        t.model,
                        body,
                        features,
                        t.explained
                    ])
                    .map_err(|e| self.sql(e))?;
                }
            }
            tx.commit().map_err(|e| self.sql(e))
        })
    }

    fn decode_features(&self, blob: &[u8]) -> Result<Vec<f32>, DbError> {
        if !blob.len().is_multiple_of(4) {
            return Err(self.corrupt("threat features", "length not a multiple of 4"));
        }
        Ok(blob
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn threat_from_row(&self, r: &rusqlite::Row<'_>) -> Result<StoredThreat, DbError> {
        let body: String = r.get(0).map_err(|e| self.sql(e))?;
        let blob: Vec<u8> = r.get(1).map_err(|e| self.sql(e))?;
        let scored: ScoredIncident =
            serde_json::from_str(&body).map_err(|x| self.corrupt("threat", x))?;
        let features = self.decode_features(&blob)?;
        Ok(StoredThreat {
            scored,
            features,
            scored_at: r.get(2).map_err(|e| self.sql(e))?,
            model: r.get(3).map_err(|e| self.sql(e))?,
            explained: r.get(4).map_err(|e| self.sql(e))?,
        })
    }

    /// One threat of one tenant (`None` when the tenant has no such threat, whoever else has).
    pub fn threat(&self, tenant: u64, id: u64) -> Result<Option<StoredThreat>, DbError> {
        self.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT body, features, scored_at, model, explained FROM threats
                     WHERE tenant = ?1 AND id = ?2",
                )
                .map_err(|e| self.sql(e))?;
            let mut rows = st
                .query(params![id_to_sql(tenant), id_to_sql(id)])
                .map_err(|e| self.sql(e))?;
            match rows.next().map_err(|e| self.sql(e))? {
                Some(r) => Ok(Some(self.threat_from_row(r)?)),
                None => Ok(None),
            }
        })
    }

    fn filter_sql(filter: &QueueFilter) -> (String, Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value;
        let mut sql = String::from("tenant = ?1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(g) = filter.grade {
            args.push(Value::Text(g.short().to_string()));
            sql.push_str(&format!(" AND predicted = ?{}", args.len() + 1));
        }
        if let Some(t) = &filter.tactic {
            args.push(Value::Text(format!(",{t},")));
            sql.push_str(&format!(" AND instr(tactics, ?{}) > 0", args.len() + 1));
        }
        if let Some(p) = filter.min_priority {
            args.push(Value::Integer(i64::from(p)));
            sql.push_str(&format!(" AND priority >= ?{}", args.len() + 1));
        }
        if filter.exclude_dismissed {
            sql.push_str(
                " AND COALESCE((SELECT v.grade FROM verdicts v WHERE v.tenant = threats.tenant
                   AND v.threat = threats.id
                   ORDER BY v.at DESC, COALESCE(v.from_seq, v.seq) DESC LIMIT 1), 'TP') = 'TP'",
            );
        }
        if let Some(v) = filter.verdicted {
            sql.push_str(&format!(
                " AND {} EXISTS (SELECT 1 FROM verdicts v WHERE v.tenant = threats.tenant
                   AND v.threat = threats.id)",
                if v { "" } else { "NOT" }
            ));
        }
        (sql, args)
    }

    /// A tenant's queue: threats matching `filter` by priority desc, P(TP) desc, id asc, at
    /// most `top`; and how many match in all.
    pub fn queue(
        &self,
        tenant: u64,
        filter: &QueueFilter,
        top: usize,
    ) -> Result<(u64, Vec<StoredThreat>), DbError> {
        use rusqlite::types::Value;
        let (cond, extra) = Self::filter_sql(filter);
        let mut args = vec![Value::Integer(id_to_sql(tenant))];
        args.extend(extra);
        self.read(|c| {
            let total: i64 = c
                .query_row(
                    &format!("SELECT COUNT(*) FROM threats WHERE {cond}"),
                    rusqlite::params_from_iter(args.iter()),
                    |r| r.get(0),
                )
                .map_err(|e| self.sql(e))?;
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT body, features, scored_at, model, explained FROM threats WHERE {cond}
                     ORDER BY priority DESC, p_tp DESC, ord ASC LIMIT {}",
                    top
                ))
                .map_err(|e| self.sql(e))?;
            let mut rows = st
                .query(rusqlite::params_from_iter(args.iter()))
                .map_err(|e| self.sql(e))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(|e| self.sql(e))? {
                out.push(self.threat_from_row(r)?);
            }
            Ok((total as u64, out))
        })
    }

    /// The feature rows and scores of a tenant's (or every tenant's) most recently scored
    /// threats, at most `limit`, with the number of distinct tenants among them.
    pub fn recent_features(
        &self,
        tenant: Option<u64>,
        limit: usize,
    ) -> Result<Population, DbError> {
        self.read(|c| {
            let (sql, args): (&str, Vec<i64>) = match tenant {
                Some(t) => (
                    "SELECT features, p_tp, tenant FROM threats WHERE tenant = ?1
                     ORDER BY scored_at DESC, ord LIMIT ?2",
                    vec![id_to_sql(t), limit as i64],
                ),
                None => (
                    "SELECT features, p_tp, tenant FROM threats
                     ORDER BY scored_at DESC, tenant, ord LIMIT ?1",
                    vec![limit as i64],
                ),
            };
            let mut st = c.prepare_cached(sql).map_err(|e| self.sql(e))?;
            let mut rows = st
                .query(rusqlite::params_from_iter(args.iter()))
                .map_err(|e| self.sql(e))?;
            let mut out = Vec::new();
            let mut tenants = Vec::new();
            while let Some(r) = rows.next().map_err(|e| self.sql(e))? {
                let blob: Vec<u8> = r.get(0).map_err(|e| self.sql(e))?;
                let p: f64 = r.get(1).map_err(|e| self.sql(e))?;
                let t: i64 = r.get(2).map_err(|e| self.sql(e))?;
                tenants.push(t as u64);
                out.push((self.decode_features(&blob)?, p as f32));
            }
            Ok(Population {
                rows: out,
                spread: Spread::of(tenants),
            })
        })
    }

    /// Threats stored (all tenants): for `/metrics`.
    pub fn threat_count(&self) -> Result<u64, DbError> {
        self.read(|c| {
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM threats", [], |r| r.get(0))
                .map_err(|e| self.sql(e))?;
            Ok(n as u64)
        })
    }

    // ---- verdicts ---------------------------------------------------------------------------

    /// Appends a verdict on a tenant's threat; `None` when the tenant has no such threat. The
    /// engine's current grade is recorded beside the analyst's. On disk when this returns.
    pub fn add_verdict(
        &self,
        key: &KeyInfo,
        threat: u64,
        grade: Grade,
        reason: Option<&str>,
    ) -> Result<Option<Verdict>, DbError> {
        self.write(|c| {
            let tx = c.transaction().map_err(|e| self.sql(e))?;
            let predicted: Option<String> = tx
                .query_row(
                    "SELECT predicted FROM threats WHERE tenant = ?1 AND id = ?2",
                    params![id_to_sql(key.tenant), id_to_sql(threat)],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.sql(e))?;
            let Some(predicted) = predicted else {
                return Ok(None);
            };
            let predicted = grade_from_sql(&self.file, &predicted)?;
            let at = now();
            let tenant_seq: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(tenant_seq), 0) + 1 FROM verdicts WHERE tenant = ?1",
                    params![id_to_sql(key.tenant)],
                    |r| r.get(0),
                )
                .map_err(|e| self.sql(e))?;
            tx.execute(
                "INSERT INTO verdicts(tenant, threat, grade, reason, analyst, key_id, at, predicted,
                                      tenant_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    id_to_sql(key.tenant),
                    id_to_sql(threat),
                    grade.short(),
                    reason,
                    key.label,
                    key.id,
                    at,
                    predicted.short(),
                    tenant_seq
                ],
            )
            .map_err(|e| self.sql(e))?;
            let seq = tx.last_insert_rowid();
            tx.commit().map_err(|e| self.sql(e))?;
            Ok(Some(Verdict {
                seq,
                tenant_seq,
                threat,
                grade,
                reason: reason.map(str::to_string),
                analyst: key.label.clone(),
                at,
                predicted,
                from_threat: None,
            }))
        })
    }

    /// Verdicts of a query selecting `seq, threat, grade, reason, analyst, at, predicted,
    /// tenant`, each with its tenant.
    fn verdict_rows(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<(Verdict, u64)>, DbError> {
        self.read(|c| {
            let mut st = c.prepare_cached(sql).map_err(|e| self.sql(e))?;
            let rows = st
                .query_map(args, |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                        r.get::<_, Option<i64>>(9)?,
                    ))
                })
                .map_err(|e| self.sql(e))?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, threat, grade, reason, analyst, at, predicted, tenant, from, tseq) =
                    row.map_err(|e| self.sql(e))?;
                out.push((
                    Verdict {
                        seq,
                        tenant_seq: tseq.ok_or_else(|| {
                            self.corrupt(&format!("verdict {seq}"), "no tenant_seq")
                        })?,
                        threat: id_from_sql(threat),
                        grade: grade_from_sql(&self.file, &grade)?,
                        reason,
                        analyst,
                        at,
                        predicted: grade_from_sql(&self.file, &predicted)?,
                        from_threat: from.map(id_from_sql),
                    },
                    id_from_sql(tenant),
                ));
            }
            Ok(out)
        })
    }

    /// A threat's verdicts, oldest first (by time, then audit-log order; a verdict carried
    /// from a merged threat sits where the original was given).
    pub fn verdicts(&self, tenant: u64, threat: u64) -> Result<Vec<Verdict>, DbError> {
        Ok(self
            .verdict_rows(
                "SELECT seq, threat, grade, reason, analyst, at, predicted, tenant, from_threat, tenant_seq FROM verdicts
                 WHERE tenant = ?1 AND threat = ?2 ORDER BY at, COALESCE(from_seq, seq)",
                params![id_to_sql(tenant), id_to_sql(threat)],
            )?
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    /// The last `window` verdicts of a tenant (or of all tenants), newest first, with the
    /// tenants among them and the largest one's share ([`Spread`]).
    pub fn recent_verdicts(
        &self,
        tenant: Option<u64>,
        window: usize,
    ) -> Result<(Vec<Verdict>, Spread), DbError> {
        let rows = match tenant {
            Some(t) => self.verdict_rows(
                "SELECT seq, threat, grade, reason, analyst, at, predicted, tenant, from_threat, tenant_seq FROM verdicts
                 WHERE tenant = ?1 AND from_threat IS NULL ORDER BY seq DESC LIMIT ?2",
                params![id_to_sql(t), window as i64],
            )?,
            None => self.verdict_rows(
                "SELECT seq, threat, grade, reason, analyst, at, predicted, tenant, from_threat, tenant_seq FROM verdicts
                 WHERE from_threat IS NULL ORDER BY seq DESC LIMIT ?1",
                params![window as i64],
            )?,
        };
        let spread = Spread::of(rows.iter().map(|(_, t)| *t));
        let rows = rows.into_iter().map(|(v, _)| v).collect();
        Ok((rows, spread))
    }

    /// The latest verdict of each verdicted threat of every tenant, with the threat's
    /// evidence: what `threatrank retrain` learns from. Ordered by verdict seq.
    pub fn latest_verdicts(&self) -> Result<Vec<(Verdict, u64)>, DbError> {
        self.verdict_rows(
            "SELECT v.seq, v.threat, v.grade, v.reason, v.analyst, v.at, v.predicted, v.tenant,
                    v.from_threat, v.tenant_seq
             FROM verdicts v
             WHERE v.seq = (SELECT w.seq FROM verdicts w
                            WHERE w.tenant = v.tenant AND w.threat = v.threat
                            ORDER BY w.at DESC, COALESCE(w.from_seq, w.seq) DESC LIMIT 1)
             ORDER BY v.seq",
            [],
        )
    }

    /// A cheap liveness probe of the file: `ok`, or the error.
    pub fn ping(&self) -> String {
        self.read(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|e| self.sql(e))
        })
        .map_or_else(|e| e.to_string(), |_| "ok".to_string())
    }

    /// `PRAGMA integrity_check` → `ok` or the problems (reads the whole file).
    pub fn integrity(&self) -> Result<String, DbError> {
        self.read(|c| {
            c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .map_err(|e| self.sql(e))
        })
    }
}

/// Evidence relabelled as a given incident (retraining: a correlated threat becomes one
/// incident with id `incident`).
pub fn as_incident(mut e: Evidence, incident: u64, grade: Grade) -> Evidence {
    e.incident = IncidentId(incident);
    e.incident_given = true;
    e.grade = Some(grade);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 file (no `from_threat`/`from_seq`/`tenant_seq` on verdicts) opens as version
    /// 2 with its verdicts intact, readable and numbered per tenant, the audit log still
    /// append-only; a version this build does not know is refused.
    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let c = Connection::open(&path).unwrap();
            let v1 = SCHEMA.replace(
                "  predicted TEXT NOT NULL,\n  from_threat INTEGER,\n  from_seq INTEGER,\n  tenant_seq INTEGER\n",
                "  predicted TEXT NOT NULL\n",
            );
            assert_ne!(v1, SCHEMA);
            c.execute_batch(&v1).unwrap();
            c.execute_batch(
                "INSERT INTO meta(key, value) VALUES ('schema', '1');
                 INSERT INTO verdicts(tenant, threat, grade, analyst, key_id, at, predicted)
                 VALUES (8, 1, 'TP', 'bob', 2, 90, 'TP'), (7, 5, 'BP', 'alice', 1, 100, 'TP');",
            )
            .unwrap();
        }
        let db = Db::open(&path, 1).unwrap();
        let v = db.verdicts(7, 5).unwrap();
        assert_eq!(v.len(), 1);
        // numbered within its tenant: tenant 8's verdict came first, tenant 7's is its first
        assert_eq!(
            (v[0].grade, v[0].from_threat, v[0].tenant_seq),
            (Grade::BenignPositive, None, 1)
        );
        drop(db);
        let c = Connection::open(&path).unwrap();
        let version: String = c
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(version, "2");
        let up = c.execute("UPDATE verdicts SET grade = 'FP'", []);
        assert!(up.unwrap_err().to_string().contains("append-only"));
        c.execute("UPDATE meta SET value = '9' WHERE key = 'schema'", [])
            .unwrap();
        drop(c);
        let err = Db::open(&path, 1).unwrap_err().to_string();
        assert!(err.contains("found 9, this build reads 2"), "{err}");
    }

    #[test]
    fn verdicts_are_append_only_and_keys_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), 1).unwrap();
        let (id, key) = db.add_key(7, "alice").unwrap();
        assert!(key.starts_with("trk_") && key.len() == 68);
        let k = db.authenticate(&key).unwrap().unwrap();
        assert_eq!((k.id, k.tenant, k.label.as_str()), (id, 7, "alice"));
        assert!(db.authenticate("trk_nope").unwrap().is_none());
        // the secret is nowhere in the file
        drop(db);
        let bytes = std::fs::read(dir.path().join("t.db")).unwrap();
        let wal = std::fs::read(dir.path().join("t.db-wal")).unwrap_or_default();
        for b in [&bytes, &wal] {
            assert!(!b.windows(key.len()).any(|w| w == key.as_bytes()));
        }
        let db = Db::open(&dir.path().join("t.db"), 1).unwrap();
        db.write(|c| {
            c.execute(
                "INSERT INTO verdicts(tenant, threat, grade, analyst, key_id, at, predicted)
                 VALUES (7, 1, 'TP', 'alice', 1, 0, 'FP')",
                [],
            )
            .unwrap();
            let up = c.execute("UPDATE verdicts SET grade = 'FP'", []);
            assert!(up.unwrap_err().to_string().contains("append-only"));
            let del = c.execute("DELETE FROM verdicts", []);
            assert!(del.unwrap_err().to_string().contains("append-only"));
            Ok(())
        })
        .unwrap();
        db.revoke_key(id).unwrap();
        assert!(db.authenticate(&key).unwrap().is_none());
        assert!(db.revoke_key(99).is_err());
    }

    /// `journal_mode` and `synchronous` of every connection `open` makes, read back: the
    /// durability of an acknowledged write rests on them (`synchronous=FULL` fsyncs the WAL
    /// at each commit; `NORMAL` would leave the last commits to the next checkpoint, `OFF` to
    /// the OS). Read on a second open of the same file too (WAL is persistent, the rest is
    /// per connection).
    #[test]
    fn every_connection_is_wal_with_synchronous_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        for _ in 0..2 {
            let db = Db::open(&path, 3).unwrap();
            let pragmas = |c: &Connection| -> (String, i64) {
                let mode = c
                    .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .unwrap();
                let sync = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
                (mode, sync)
            };
            let writer = db.write(|c| Ok(pragmas(c))).unwrap();
            assert_eq!(
                writer,
                ("wal".to_string(), 2),
                "writer: (journal_mode, synchronous)"
            );
            assert_eq!(db.readers.len(), 3);
            for i in 0..db.readers.len() {
                // `read` takes the readers in turn
                let reader = db.read(|c| Ok(pragmas(c))).unwrap();
                assert_eq!(reader, ("wal".to_string(), 2), "reader {i}");
            }
        }
    }

    #[test]
    fn id_order_is_u64_order() {
        let ids = [0u64, 5, (1 << 63) - 1, 1 << 63, u64::MAX];
        for w in ids.windows(2) {
            assert!(id_order(w[0]) < id_order(w[1]));
            assert_eq!(id_from_sql(id_to_sql(w[0])), w[0]);
        }
    }
}
