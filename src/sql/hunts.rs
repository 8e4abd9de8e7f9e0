//! Saved hunting queries: named, versioned SQL over the `alerts` table, kept as files under
//! `hunts/`, run through DataFusion, their hits scored and queued like any candidate threat.
//!
//! A hunt file is plain SQL with a header of `-- key: value` comment lines:
//!
//! ```sql
//! -- name: device_multi_detector_day
//! -- version: 2
//! -- owner: hunting team
//! -- techniques: T1059, T1021
//! -- description: one device hit by three or more detectors across two tactics in a day
//! SELECT "OrgId", "IncidentId", 'why it matched' AS hit_reason FROM alerts ...
//! ```
//!
//! `name`, `version`, `owner`, `description` are required; `techniques` lists ATT&CK ids
//! (checked for shape). **Contract of the query:** it returns the columns `OrgId` and
//! `IncidentId` (the incidents it matched) and may return `hit_reason`. Hits are existing
//! incidents of the same tenant: [`run`] scores exactly those incidents with
//! `threatrank_features`/`threatrank_score` and returns them as a queue (priority first), each
//! row carrying the hunt's name and version, so a hunt's finds flow into the hunters' queue
//! with grade, probability and certainty. A hit row never mixes tenants: it is the tenant's own
//! incident, whatever cross-tenant context the query used to find it.

use super::{create_views_over, Engine, SqlError};
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One saved hunt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunt {
    /// unique name (`[a-z0-9_]+`)
    pub name: String,
    /// version, bumped on every change of the query
    pub version: u32,
    /// who maintains it
    pub owner: String,
    /// what it finds
    pub description: String,
    /// ATT&CK technique ids it looks for
    pub techniques: Vec<String>,
    /// the query
    pub sql: String,
    /// the file it came from
    pub file: PathBuf,
}

/// Parses one hunt file.
pub fn parse(file: &Path, text: &str) -> Result<Hunt, SqlError> {
    let err = |reason: String| SqlError::Hunt {
        file: file.display().to_string(),
        reason,
    };
    let mut name = None;
    let mut version = None;
    let mut owner = None;
    let mut description = None;
    let mut techniques = Vec::new();
    let mut sql = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        let header = t.strip_prefix("--").map(str::trim).and_then(|h| {
            let (k, v) = h.split_once(':')?;
            let k = k.trim();
            matches!(
                k,
                "name" | "version" | "owner" | "description" | "techniques"
            )
            .then(|| (k.to_string(), v.trim().to_string()))
        });
        match header {
            Some((k, v)) if sql.trim().is_empty() => match k.as_str() {
                "name" => {
                    if v.is_empty()
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    {
                        return Err(err(format!(
                            "line {}: name {v:?} must be lowercase letters, digits and _",
                            i + 1
                        )));
                    }
                    name = Some(v);
                }
                "version" => {
                    version = Some(v.parse::<u32>().map_err(|_| {
                        err(format!(
                            "line {}: version {v:?} is not a whole number",
                            i + 1
                        ))
                    })?)
                }
                "owner" => owner = Some(v),
                "description" => description = Some(v),
                _ => {
                    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        let ok = t.len() >= 5
                            && t.starts_with('T')
                            && t[1..]
                                .split('.')
                                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                        if !ok {
                            return Err(err(format!(
                                "line {}: {t:?} is not an ATT&CK technique id (T1234 or T1234.001)",
                                i + 1
                            )));
                        }
                        techniques.push(t.to_string());
                    }
                }
            },
            _ => {
                sql.push_str(line);
                sql.push('\n');
            }
        }
    }
    let need = |v: Option<String>, k: &str| v.ok_or_else(|| err(format!("missing `-- {k}:` line")));
    let sql = sql.trim().trim_end_matches(';').trim().to_string();
    if sql.is_empty() {
        return Err(err("no query after the header".into()));
    }
    Ok(Hunt {
        name: need(name, "name")?,
        version: version.ok_or_else(|| err("missing `-- version:` line".into()))?,
        owner: need(owner, "owner")?,
        description: need(description, "description")?,
        techniques,
        sql,
        file: file.to_path_buf(),
    })
}

/// Every `*.sql` hunt in `dir`, by name; two files with one name are an error.
pub fn load_dir(dir: &Path) -> Result<Vec<Hunt>, SqlError> {
    let rd = std::fs::read_dir(dir).map_err(|e| SqlError::Hunt {
        file: dir.display().to_string(),
        reason: format!("cannot list hunts: {e}"),
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut hunts: Vec<Hunt> = Vec::with_capacity(files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| SqlError::Hunt {
            file: f.display().to_string(),
            reason: e.to_string(),
        })?;
        let h = parse(&f, &text)?;
        if let Some(o) = hunts.iter().find(|o| o.name == h.name) {
            return Err(SqlError::Hunt {
                file: f.display().to_string(),
                reason: format!(
                    "hunt name {:?} is also used by {}",
                    h.name,
                    o.file.display()
                ),
            });
        }
        hunts.push(h);
    }
    hunts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(hunts)
}

/// What a hunt run returns.
#[derive(Debug)]
pub struct HuntOutcome {
    /// distinct incidents the hunt matched
    pub hits: usize,
    /// the matched incidents scored, priority first (columns: hunt, version, tenant, incident,
    /// priority, predicted_grade, p_true_positive, certainty, alerts, hit_reason, model)
    pub queue: Vec<RecordBatch>,
    /// seconds spent finding the hits
    pub find_seconds: f64,
    /// seconds spent scoring them
    pub score_seconds: f64,
}

/// Runs `hunt` over table `alerts` of `ctx` (a [`super::session`]), then scores its hits.
pub async fn run(
    ctx: &SessionContext,
    engine: &Arc<Engine>,
    hunt: &Hunt,
) -> Result<HuntOutcome, SqlError> {
    let _ = engine;
    let t0 = std::time::Instant::now();
    let df = ctx.sql(&hunt.sql).await?;
    let cols: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for need in ["OrgId", "IncidentId"] {
        if !cols.iter().any(|c| c == need) {
            return Err(SqlError::Hunt {
                file: hunt.file.display().to_string(),
                reason: format!(
                    "the query returns columns {cols:?}: a hunt must return `OrgId` and \
                     `IncidentId` (the incidents it matched)"
                ),
            });
        }
    }
    let reason = if cols.iter().any(|c| c == "hit_reason") {
        "MIN(CAST(hit_reason AS VARCHAR))"
    } else {
        "CAST(NULL AS VARCHAR)"
    };
    ctx.deregister_table("hunt_raw")?;
    ctx.register_table("hunt_raw", df.into_view())?;
    // distinct hits, materialized: the alerts of only these incidents are featurized
    let hits = ctx
        .sql(&format!(
            "SELECT CAST(\"OrgId\" AS VARCHAR) AS \"OrgId\", CAST(\"IncidentId\" AS VARCHAR) AS \
             \"IncidentId\", {reason} AS hit_reason FROM hunt_raw GROUP BY 1, 2"
        ))
        .await?
        .collect()
        .await?;
    let n_hits: usize = hits.iter().map(RecordBatch::num_rows).sum();
    let find_seconds = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    ctx.deregister_table("hunt_hits")?;
    let schema = hits
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
    let mem = datafusion::datasource::MemTable::try_new(schema, vec![hits])?;
    ctx.register_table("hunt_hits", Arc::new(mem))?;
    let queue = if n_hits == 0 {
        Vec::new()
    } else {
        let alerts_cols: Vec<String> = ctx
            .table(super::ALERTS_TABLE)
            .await?
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        create_views_over(
            ctx,
            &alerts_cols,
            // the hits on the left: DataFusion builds its hash table on the left side (it
            // has no row count for a CSV to decide by), and hash joins cannot spill
            "(SELECT a.* FROM hunt_hits h JOIN alerts a \
              ON CAST(a.\"OrgId\" AS VARCHAR) = h.\"OrgId\" \
             AND CAST(a.\"IncidentId\" AS VARCHAR) = h.\"IncidentId\")",
            "hunt_",
        )
        .await?;
        let name = hunt.name.replace('\'', "''");
        ctx.sql(&format!(
            "SELECT '{name}' AS hunt, {version} AS version, s.tenant, s.incident, s.priority, \
                    s.predicted_grade, s.p_true_positive, s.certainty, s.alerts, \
                    r.hit_reason, s.model \
             FROM hunt_scores s LEFT JOIN (SELECT \"OrgId\", \"IncidentId\", hit_reason \
                                           FROM hunt_hits) r \
               ON CAST(s.tenant AS VARCHAR) = r.\"OrgId\" \
              AND CAST(s.incident AS VARCHAR) = r.\"IncidentId\" \
             WHERE s.priority IS NOT NULL \
             ORDER BY s.priority DESC, s.tenant, s.incident",
            version = hunt.version
        ))
        .await?
        .collect()
        .await?
    };
    Ok(HuntOutcome {
        hits: n_hits,
        queue,
        find_seconds,
        score_seconds: t1.elapsed().as_secs_f64(),
    })
}
