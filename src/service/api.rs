//! HTTP routes, auth, JSON shapes and errors of the service (contract: `docs/SERVICE.md`).

use super::db::{self, KeyInfo, QueueFilter, StoredThreat, Verdict};
use super::{notify, on_rayon, AppState};
use crate::domain::{Evidence, Grade, ENTITY_COLUMNS};
use crate::ingest::{self, format_rfc3339, IngestParams, InputFormat};
use crate::pipeline::{self, Loaded};
use crate::rank::{Actor, FamilyContribution, Reason, ScoredIncident};
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

type Shared = Arc<AppState>;

/// An error answer: status and `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status
    pub status: StatusCode,
    /// stable code (`not_found`, …)
    pub code: &'static str,
    /// for humans
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", m)
    }
    /// 401
    pub fn unauthorized(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
    }
    /// 404
    pub fn not_found(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", m)
    }
    /// 500
    pub fn internal(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
    }
}

impl From<db::DbError> for ApiError {
    fn from(e: db::DbError) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The service's routes over its state.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/alerts", post(post_alerts))
        .route("/v1/queue", get(queue))
        .route("/v1/threats/{id}", get(threat))
        .route("/v1/threats/{id}/verdict", post(post_verdict))
        .route("/v1/notifications", get(notifications))
        .route("/v1/drift", get(drift))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Deadline and metrics around every request.
async fn observe(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let start = std::time::Instant::now();
    let deadline = state.params.get().request_timeout;
    // the two writing routes keep their own deadline, up to the point where they start to
    // write (`post_alerts`, `post_verdict`): a 503 then means nothing was stored, and a write
    // that began is finished and answered; reads are cut off at the deadline
    let own_deadline =
        method == "POST" && (route == "/v1/alerts" || route == "/v1/threats/{id}/verdict");
    let resp = if own_deadline {
        next.run(req).await
    } else {
        match tokio::time::timeout(deadline, next.run(req)).await {
            Ok(r) => r,
            Err(_) => timeout_error(deadline, "").into_response(),
        }
    };
    let mut resp = resp;
    // answers carry tenant data: no browser or proxy keeps a copy
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    state.metrics.request(
        &route,
        &method,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// The 503 `timeout` answer of a request over `deadline`; `what` is added to its message.
fn timeout_error(deadline: std::time::Duration, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        format!(
            "request took longer than {} s{what}",
            deadline.as_secs_f64()
        ),
    )
}

/// Runs a database call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// The key behind `Authorization: Bearer …`, or 401.
async fn caller(state: &AppState, headers: &HeaderMap) -> ApiResult<KeyInfo> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing Authorization: Bearer <key> header",
        ));
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <key>`"))?
        .to_string();
    let db = state.db.clone();
    blocking(move || Ok(db.authenticate(&key)?))
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown or revoked key"))
}

/// A threat id as the service writes it: decimal digits, no sign, no leading zero (`+16997`
/// and `016997` name no threat, so one threat has exactly one URL).
fn parse_threat_id(s: &str) -> ApiResult<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical
        .then(|| s.parse().ok())
        .flatten()
        .ok_or_else(|| ApiError::not_found(format!("no threat {s:?} for this key")))
}

/// The `{id}` path segment as a threat id; one that does not even decode (percent-escaped bytes
/// that are not UTF-8) is the same JSON 404 as any other id that names no threat.
fn threat_id(id: Result<Path<String>, PathRejection>) -> ApiResult<u64> {
    let Path(id) =
        id.map_err(|r| ApiError::not_found(format!("no such threat: {}", r.body_text())))?;
    parse_threat_id(&id)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body over the limit of {limit} bytes (--max-body-bytes)"),
    )
}

/// A request body, read only after the caller's key was checked (so a client without a key
/// never makes the service hold its body), refused with 413 before a byte is read when its
/// `Content-Length` is over `--max-body-bytes` (and as soon as a chunked body passes it), and
/// read within the shared budget of bodies in memory (`--max-inflight-body-bytes`): the
/// request waits, under its deadline, until its declared length fits. The permit keeps the
/// reservation while the body is processed.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(Bytes, tokio::sync::OwnedSemaphorePermit)> {
    use http_body_util::BodyExt;
    let limit = state.params.get().max_body_bytes;
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))?,
        ),
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let want = declared.map_or(limit, |n| n as usize);
    let permit = state.reserve_body(want).await;
    let mut body = body;
    let mut buf = Vec::with_capacity(want.min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok((Bytes::from(buf), permit))
}

// ---- static -----------------------------------------------------------------------------

const PAGE: &str = include_str!("web/index.html");
const OPENAPI: &str = include_str!("openapi.json");

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz(State(state): State<Shared>) -> ApiResult<Json<serde_json::Value>> {
    let e = state.engine();
    let db = state.db.clone();
    let integrity = blocking(move || Ok(db.ping())).await?;
    let card = &e.artifact.card;
    Ok(Json(serde_json::json!({
        "status": if integrity == "ok" { "ok" } else { "degraded" },
        "db": integrity,
        "model": {
            "sha256": e.sha256,
            "format_version": e.artifact.format_version,
            "algorithm": card.params.algorithm().name(),
            "trained_on": card.data.file,
            "trained_incidents": card.data.incidents,
            "loaded_at": format_rfc3339(e.loaded_at),
        },
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

async fn metrics(State(state): State<Shared>) -> ApiResult<Response> {
    let db = state.db.clone();
    let threats = blocking(move || Ok(db.threat_count()?)).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(threats),
    )
        .into_response())
}

// ---- alerts -----------------------------------------------------------------------------

/// One rejected record of a batch.
#[derive(Debug, Serialize)]
pub struct RejectionOut {
    /// 1-based line in the body
    pub line: u64,
    /// 0-based record index
    pub record: u64,
    /// field to blame
    pub column: Option<String>,
    /// why
    pub reason: String,
}

/// Answer of `POST /v1/alerts`.
#[derive(Debug, Serialize)]
pub struct AlertsOut {
    /// records read (CSV rows / JSONL lines)
    pub records: u64,
    /// records accepted
    pub accepted: u64,
    /// records rejected (`records == accepted + rejected`)
    pub rejected: u64,
    /// each rejection
    pub rejections: Vec<RejectionOut>,
    /// evidence rows newly stored
    pub evidence_stored: u64,
    /// evidence rows already stored by an earlier identical batch (a retried request)
    pub evidence_duplicate: u64,
    /// threats (re)scored by this batch
    pub threats: Vec<String>,
}

fn format_of(headers: &HeaderMap) -> ApiResult<InputFormat> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "text/csv" => Ok(InputFormat::GuideCsv),
        "application/x-ndjson"
        | "application/jsonl"
        | "application/ndjson"
        | "application/json" => Ok(InputFormat::NativeJsonl),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {other:?}: send GUIDE CSV as text/csv or native alerts as \
                 application/x-ndjson"
            ),
        )),
    }
}

/// Where a batch is, for its deadline: still reading and checking (the deadline cancels it),
/// writing (it completes and answers, late), or cancelled (nothing was or will be written).
#[derive(Debug, Default)]
struct BatchGate(std::sync::atomic::AtomicU8);

impl BatchGate {
    const RUNNING: u8 = 0;
    const WRITING: u8 = 1;
    const CANCELLED: u8 = 2;

    fn swap(&self, from: u8, to: u8) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.0.compare_exchange(from, to, SeqCst, SeqCst).is_ok()
    }
    /// The batch may write: false when the deadline already cancelled it.
    fn begin_writing(&self) -> bool {
        self.swap(Self::RUNNING, Self::WRITING)
    }
    /// The deadline passed: true when the batch had not begun to write (it never will).
    fn cancel(&self) -> bool {
        self.swap(Self::RUNNING, Self::CANCELLED)
    }
}

const NOTHING_STORED: &str = "; nothing of the batch was stored";

/// `POST /v1/alerts` under its deadline, with an exact outcome: the key check, the body, the
/// tenant's turn and the reading of the batch must finish within `--request-timeout-seconds`,
/// else the answer is 503 `timeout` and nothing of the batch is stored, ever (the batch checks
/// the gate before its first write). Once the batch has begun to write it runs to the end and
/// answers with what it stored, even past the deadline: the client always knows what was stored.
async fn post_alerts(State(state): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let timeout = state.params.get().request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let gate = Arc::new(BatchGate::default());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let work = {
        let gate = gate.clone();
        let state = state.clone();
        async move {
            let key = caller(&state, &headers).await?;
            let format = format_of(&headers)?;
            let (body, reserved) = read_body(&state, &headers, body).await?;
            let lock = state.tenant_lock(key.tenant);
            let guard = lock.lock_owned().await;
            let st = state.clone();
            // the batch runs on to its answer even when the request is cancelled, holding the
            // tenant's turn and the body's reservation until it has finished
            let job = on_rayon(move || {
                let out = ingest_batch(&st, &key, format, &body, &gate);
                drop((guard, reserved, body));
                out
            });
            let _ = tx.send(job.await);
            Ok::<(), ApiError>(())
        }
    };
    let work = tokio::spawn(work);
    let abort = work.abort_handle();
    let answer = async {
        match rx.await {
            Ok(Ok(r)) => r,
            Ok(Err(p)) => Err(ApiError::internal(format!("scoring failed: {p}"))),
            // the work ended before the batch ran: its error
            Err(_) => Err(match work.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => ApiError::internal("batch ended without an answer"),
                Err(e) => ApiError::internal(format!("worker failed: {e}")),
            }),
        }
    };
    tokio::pin!(answer);
    match tokio::time::timeout_at(deadline, &mut answer).await {
        Ok(r) => r.map_or_else(IntoResponse::into_response, |o| Json(o).into_response()),
        Err(_) if gate.cancel() => {
            // still before the first write: stop waiting for the body or the tenant's turn
            abort.abort();
            timeout_error(timeout, NOTHING_STORED).into_response()
        }
        // writing began before the deadline: finish and say what was stored
        Err(_) => answer
            .await
            .map_or_else(IntoResponse::into_response, |o| Json(o).into_response()),
    }
}

/// Reads a batch for the key's tenant, stores it, re-scores every threat it touches.
fn ingest_batch(
    state: &AppState,
    key: &KeyInfo,
    format: InputFormat,
    body: &[u8],
    gate: &BatchGate,
) -> ApiResult<AlertsOut> {
    let tenant = key.tenant;
    let p = state.params.get();
    // bounded expansion: every text value, every alert's entities and the batch's rows
    let field_limit = match format {
        InputFormat::GuideCsv => p.max_text_bytes,
        // a JSONL line holds a whole alert: bounded by the body, its values one by one
        _ => p.max_body_bytes,
    };
    let params = IngestParams::default()
        .read_labels(false)
        .only_tenant(Some(tenant))
        .max_field_bytes(field_limit)
        .max_text_bytes(p.max_text_bytes)
        .max_entities_per_alert(p.max_entities_per_alert)
        .check()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let ing = ingest::read_from(body, "request body", format, &params)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if ing.evidence.len() > p.max_batch_rows {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the batch expands to {} evidence rows, over the limit of {} per request \
                 (--max-batch-rows); nothing of it was stored",
                ing.evidence.len(),
                p.max_batch_rows
            ),
        ));
    }
    let report = ing.report;
    let rejections = report
        .rejected
        .iter()
        .map(|r| RejectionOut {
            line: r.line,
            record: r.record,
            column: r.column.clone(),
            reason: r.reason.clone(),
        })
        .collect();
    let rejected = report.rejected.len() as u64;
    let mut out = AlertsOut {
        records: report.records,
        accepted: report.accepted,
        rejected,
        rejections,
        evidence_stored: 0,
        evidence_duplicate: 0,
        threats: Vec::new(),
    };
    state.metrics.alerts(report.accepted, rejected, 0);
    if ing.evidence.is_empty() {
        return Ok(out);
    }
    if !gate.begin_writing() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request's deadline passed{NOTHING_STORED}"),
        ));
    }
    let stored = state.db.insert_evidence(tenant, &ing.evidence)?;
    out.evidence_stored = stored;
    out.evidence_duplicate = ing.evidence.len() as u64 - stored;
    state.metrics.alerts(0, 0, stored);
    let given: Vec<u64> = ing
        .evidence
        .iter()
        .filter(|e| e.incident_given)
        .map(|e| e.incident.0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let loose = ing
        .evidence
        .iter()
        .filter(|e| !e.incident_given)
        .map(|e| e.timestamp)
        .fold(None, |span: Option<(i64, i64)>, t| {
            Some(span.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))))
        });
    let targets = Targets {
        given,
        loose_span: loose,
        threats: Vec::new(),
    };
    let threats = rescore(state, tenant, &targets, false)?;
    out.threats = threats.into_iter().map(|t| t.to_string()).collect();
    Ok(out)
}

/// What to score again for one tenant.
#[derive(Debug, Clone, Default)]
struct Targets {
    /// given incident ids (all their stored evidence)
    given: Vec<u64>,
    /// time span of a batch's loose alerts: the candidate threats within the linker's window
    /// of it are re-correlated
    loose_span: Option<(i64, i64)>,
    /// stored correlated threats, whole (explaining on read)
    threats: Vec<u64>,
}

/// Scores again, with all their stored evidence, the given incidents of a tenant and the
/// correlated threats named in `targets`; when the batch brought alerts without an incident id
/// (`loose_span`), re-correlates the candidate threats they can touch: those with an alert
/// within the linker's window of the span, each with all of its evidence. A new alert links
/// only to alerts within the window (single linkage, stoplist learnt at training, never from
/// the batch), so threats outside it cannot change and are left alone; the cost of a batch is
/// bounded by the alerts near it in time, not by the tenant's history. A correlated threat
/// loaded whole correlates into itself again (its rows are one connected group). With
/// `explain`, exact reasons are computed too; without, the threats are stored unexplained and
/// the first read explains them ([`ensure_explained`]). Stores the result.
fn rescore(state: &AppState, tenant: u64, targets: &Targets, explain: bool) -> ApiResult<Vec<u64>> {
    let engine = state.engine();
    let window = engine
        .artifact
        .correlation
        .as_ref()
        .map_or(0, |l| l.window_seconds());
    let span = targets
        .loose_span
        .map(|(lo, hi)| (lo.saturating_sub(window), hi.saturating_add(window)));
    let db::Rescoring { mut rows, touched } =
        state.db.evidence_for(tenant, &targets.given, span)?;
    if !targets.threats.is_empty() {
        rows.extend(state.db.evidence_of_threats(tenant, &targets.threats)?);
        rows.sort_by_key(|(s, _)| *s);
        rows.dedup_by_key(|(s, _)| *s);
    }
    let (seqs, evidence): (Vec<i64>, Vec<Evidence>) = rows.into_iter().unzip();
    let loaded = Loaded::in_memory(evidence);
    let reasons = state.params.get().reasons;
    let none = |_: &[ScoredIncident]| Vec::new();
    let select: Option<pipeline::ExplainSelect<'_>> = if explain { None } else { Some(&none) };
    let scored = pipeline::score_loaded_explaining(
        &engine.artifact,
        loaded,
        reasons,
        &engine.knowledge,
        select,
    )
    .map_err(|e| ApiError::internal(format!("scoring: {e}")))?;
    let now = db::now();
    let mut evidence_threat = Vec::new();
    let mut stored = Vec::with_capacity(scored.incidents.len());
    for (i, (inc, s)) in scored
        .loaded
        .corr
        .incidents
        .iter()
        .zip(&scored.incidents)
        .enumerate()
    {
        if !inc.key.incident.is_correlated() && !targets.given.contains(&inc.key.incident.0) {
            continue;
        }
        for &r in &inc.evidence {
            if !scored.loaded.evidence[r as usize].incident_given {
                evidence_threat.push((seqs[r as usize], inc.key.incident.0));
            }
        }
        stored.push(StoredThreat {
            scored: s.clone(),
            features: scored.features.row(i).to_vec(),
            scored_at: now,
            model: engine.sha256.clone(),
            explained: explain,
        });
    }
    let live: BTreeSet<u64> = stored.iter().map(|t| t.scored.key.incident.0).collect();
    let retired: Vec<u64> = touched
        .into_iter()
        .filter(|&id| crate::domain::IncidentId(id).is_correlated() && !live.contains(&id))
        .collect();
    state
        .db
        .store_scored(tenant, &stored, &evidence_threat, &retired)?;
    if !explain {
        state
            .metrics
            .scored(stored.iter().map(|t| t.scored.priority));
    }
    Ok(stored.iter().map(|t| t.scored.key.incident.0).collect())
}

/// Explains the threats of a read that are not explained yet (under the tenant's writer lock,
/// from their current evidence) and returns the list with them replaced; a threat merged away
/// meanwhile drops out. Hunters read the heads of their queues: TreeSHAP is paid for what is
/// read, once.
async fn ensure_explained(
    state: &Shared,
    tenant: u64,
    threats: Vec<StoredThreat>,
) -> ApiResult<Vec<StoredThreat>> {
    let missing: Vec<u64> = threats
        .iter()
        .filter(|t| !t.explained)
        .map(|t| t.scored.key.incident.0)
        .collect();
    if missing.is_empty() {
        return Ok(threats);
    }
    let lock = state.tenant_lock(tenant);
    let _guard = lock.lock().await;
    let (correlated, given): (Vec<u64>, Vec<u64>) = missing
        .iter()
        .partition(|&&id| crate::domain::IncidentId(id).is_correlated());
    let targets = Targets {
        given,
        loose_span: None,
        threats: correlated,
    };
    let st = state.clone();
    on_rayon(move || rescore(&st, tenant, &targets, true))
        .await
        .map_err(|p| ApiError::internal(format!("explaining failed: {p}")))??;
    let db = state.db.clone();
    blocking(move || {
        let mut out = Vec::with_capacity(threats.len());
        for t in threats {
            if t.explained {
                out.push(t);
            } else if let Some(fresh) = db.threat(tenant, t.scored.key.incident.0)? {
                out.push(fresh);
            }
        }
        Ok(out)
    })
    .await
}

// ---- queue and threats ------------------------------------------------------------------

/// The latest verdict, in a queue row.
#[derive(Debug, Serialize)]
pub struct VerdictBrief {
    /// TP/BP/FP
    pub grade: &'static str,
    /// key label
    pub analyst: String,
    /// RFC 3339
    pub at: String,
}

/// A threat in the queue.
#[derive(Debug, Serialize)]
pub struct ThreatSummary {
    /// threat id (decimal u64)
    pub id: String,
    /// 0–100
    pub priority: u8,
    /// calibrated P(TP)
    pub p_tp: f32,
    /// calibrated P(BP)
    pub p_bp: f32,
    /// calibrated P(FP)
    pub p_fp: f32,
    /// TP/BP/FP
    pub predicted: &'static str,
    /// conformal set, e.g. `TP|BP`
    pub grade_set: String,
    /// `uncertain` or `confident`
    pub certainty: &'static str,
    /// tactics, kill-chain order
    pub tactics: Vec<String>,
    /// most similar known group
    pub actor: Option<Actor>,
    /// most frequent detector
    pub detector: String,
    /// most frequent title
    pub title: String,
    /// most frequent category
    pub category: String,
    /// distinct alerts
    pub n_alerts: u32,
    /// evidence rows
    pub n_evidence: u32,
    /// RFC 3339
    pub first_seen: String,
    /// RFC 3339
    pub last_seen: String,
    /// RFC 3339
    pub scored_at: String,
    /// top reasons
    pub reasons: Vec<Reason>,
    /// latest verdict
    pub verdict: Option<VerdictBrief>,
}

fn summary(t: &StoredThreat, latest: Option<&Verdict>) -> ThreatSummary {
    let s: &ScoredIncident = &t.scored;
    ThreatSummary {
        id: s.key.incident.0.to_string(),
        priority: s.priority,
        p_tp: s.probs[0],
        p_bp: s.probs[1],
        p_fp: s.probs[2],
        predicted: s.predicted.short(),
        grade_set: s.grade_set.to_string(),
        certainty: if s.is_uncertain() {
            "uncertain"
        } else {
            "confident"
        },
        tactics: s.tactics.clone(),
        actor: s.actor.clone(),
        detector: s.detector.clone(),
        title: s.title.clone(),
        category: s.category.clone(),
        n_alerts: s.n_alerts,
        n_evidence: s.n_evidence,
        first_seen: format_rfc3339(s.first_seen),
        last_seen: format_rfc3339(s.last_seen),
        scored_at: format_rfc3339(t.scored_at),
        reasons: s.reasons.clone(),
        verdict: latest.map(|v| VerdictBrief {
            grade: v.grade.short(),
            analyst: v.analyst.clone(),
            at: format_rfc3339(v.at),
        }),
    }
}

/// Query parameters accepted by a route; anything else is a 400 (a typo never goes unnoticed).
fn check_query(q: &BTreeMap<String, String>, allowed: &[&str]) -> ApiResult<()> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(format!(
            "unknown query parameter {k:?} (expected one of {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn parse_grade(s: &str) -> ApiResult<Grade> {
    Grade::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown grade {s:?} (TP, BP, FP or TruePositive, BenignPositive, FalsePositive)"
        ))
    })
}

/// Answer of `GET /v1/queue`.
#[derive(Debug, Serialize)]
pub struct QueueOut {
    /// the caller's threats matching the filters
    pub total: u64,
    /// the first `top` of them
    pub threats: Vec<ThreatSummary>,
}

fn queue_filter(q: &BTreeMap<String, String>) -> ApiResult<QueueFilter> {
    let tactic = match q.get("tactic").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(t) if crate::signals::TACTICS.contains(&t) => Some(t.to_string()),
        Some(t) => {
            return Err(ApiError::bad_request(format!(
                "unknown tactic {t:?} (expected an ATT&CK tactic such as lateral-movement)"
            )))
        }
    };
    let grade = match q.get("grade").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(g) => Some(parse_grade(g)?),
    };
    let verdicted = match q.get("status").map(String::as_str) {
        None | Some("open") => Some(false),
        Some("verdicted") => Some(true),
        Some("all") => None,
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "unknown status {s:?} (open, verdicted or all)"
            )))
        }
    };
    Ok(QueueFilter {
        tactic,
        grade,
        verdicted,
        min_priority: None,
        exclude_dismissed: false,
    })
}

fn parse_bounded(
    q: &BTreeMap<String, String>,
    name: &str,
    default: u64,
    max: u64,
) -> ApiResult<u64> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n) || (name == "min_priority" && *n == 0))
            .ok_or_else(|| {
                ApiError::bad_request(format!("{name} must be an integer in 1–{max}, got {v:?}"))
            }),
    }
}

async fn queue(
    State(state): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<QueueOut>> {
    let key = caller(&state, &headers).await?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_query(&q, &["top", "tactic", "grade", "status"])?;
    let top = parse_bounded(&q, "top", 50, 1000)? as usize;
    let filter = queue_filter(&q)?;
    let db = state.db.clone();
    let tenant = key.tenant;
    let (total, threats) = blocking(move || Ok(db.queue(tenant, &filter, top)?)).await?;
    let threats = ensure_explained(&state, tenant, threats).await?;
    let db = state.db.clone();
    blocking(move || {
        let mut out = Vec::with_capacity(threats.len());
        for t in &threats {
            let vs = db.verdicts(tenant, t.scored.key.incident.0)?;
            out.push(summary(t, vs.last()));
        }
        Ok(Json(QueueOut {
            total,
            threats: out,
        }))
    })
    .await
}

/// One evidence row of a threat.
#[derive(Debug, Serialize)]
pub struct EvidenceOut {
    /// alert id
    pub alert_id: u64,
    /// RFC 3339
    pub timestamp: String,
    /// detector
    pub detector: String,
    /// title
    pub title: String,
    /// category
    pub category: String,
    /// ATT&CK techniques
    pub techniques: Vec<String>,
    /// entity type
    pub entity_type: String,
    /// Impacted / Related
    pub role: &'static str,
    /// severity, when given
    pub severity: Option<crate::domain::Severity>,
    /// entity codes present, column → code
    pub entities: BTreeMap<&'static str, u64>,
}

fn evidence_out(e: &Evidence) -> EvidenceOut {
    EvidenceOut {
        alert_id: e.alert.0,
        timestamp: format_rfc3339(e.timestamp),
        detector: e.detector.clone(),
        title: e.title.clone(),
        category: e.category.clone(),
        techniques: e.techniques.clone(),
        entity_type: e.entity_type.clone(),
        role: if e.impacted { "Impacted" } else { "Related" },
        severity: e.severity,
        entities: ENTITY_COLUMNS
            .iter()
            .zip(&e.entities.codes)
            .filter_map(|(c, v)| v.map(|v| (*c, v)))
            .collect(),
    }
}

/// A verdict in the audit trail.
#[derive(Debug, Serialize)]
pub struct VerdictOut {
    /// position among the caller's tenant's verdicts, from 1
    pub seq: i64,
    /// threat id
    pub threat: String,
    /// analyst grade
    pub grade: &'static str,
    /// optional reason
    pub reason: Option<String>,
    /// key label
    pub analyst: String,
    /// RFC 3339
    pub at: String,
    /// the engine's grade then
    pub predicted: &'static str,
    /// the threat it was given on, when that threat later merged into this one
    pub from_threat: Option<String>,
}

fn verdict_out(v: &Verdict) -> VerdictOut {
    VerdictOut {
        seq: v.tenant_seq,
        threat: v.threat.to_string(),
        grade: v.grade.short(),
        reason: v.reason.clone(),
        analyst: v.analyst.clone(),
        at: format_rfc3339(v.at),
        predicted: v.predicted.short(),
        from_threat: v.from_threat.map(|t| t.to_string()),
    }
}

/// Answer of `GET /v1/threats/{id}`.
#[derive(Debug, Serialize)]
pub struct ThreatOut {
    /// the queue row
    #[serde(flatten)]
    pub summary: ThreatSummary,
    /// per-family contributions to the TP raw score
    pub families: Vec<FamilyContribution>,
    /// every stored evidence row
    pub evidence: Vec<EvidenceOut>,
    /// the audit trail, oldest first
    pub verdicts: Vec<VerdictOut>,
}

async fn threat(
    State(state): State<Shared>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ThreatOut>> {
    let key = caller(&state, &headers).await?;
    let id = threat_id(id)?;
    let db = state.db.clone();
    let tenant = key.tenant;
    let t = blocking(move || {
        db.threat(tenant, id)?
            .ok_or_else(|| ApiError::not_found(format!("no threat {id} for this key")))
    })
    .await?;
    let t = ensure_explained(&state, tenant, vec![t])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no threat {id} for this key")))?;
    let db = state.db.clone();
    blocking(move || {
        let vs = db.verdicts(key.tenant, id)?;
        let ev = db.threat_evidence(key.tenant, id)?;
        Ok(Json(ThreatOut {
            summary: summary(&t, vs.last()),
            families: t.scored.families.clone(),
            evidence: ev.iter().map(evidence_out).collect(),
            verdicts: vs.iter().map(verdict_out).collect(),
        }))
    })
    .await
}

/// Body of `POST /v1/threats/{id}/verdict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictIn {
    /// TP/BP/FP or the GUIDE spelling
    pub grade: String,
    /// optional reason (≤ 2000 characters)
    #[serde(default)]
    pub reason: Option<String>,
}

/// Longest verdict reason, characters.
pub const MAX_REASON_CHARS: usize = 2000;

/// `POST /v1/threats/{id}/verdict`: the key check, the body and its checks must finish within
/// the deadline (else 503 `timeout`, nothing stored); the one-row write that follows is always
/// finished and answered.
async fn post_verdict(
    State(state): State<Shared>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<(StatusCode, Json<VerdictOut>)> {
    let timeout = state.params.get().request_timeout;
    let checked = tokio::time::timeout(timeout, verdict_request(&state, &headers, id, body))
        .await
        .map_err(|_| timeout_error(timeout, NOTHING_STORED))??;
    let (key, id, grade, reason) = checked;
    let db = state.db.clone();
    let stored = blocking(move || {
        db.add_verdict(&key, id, grade, reason.as_deref())?
            .ok_or_else(|| ApiError::not_found(format!("no threat {id} for this key")))
    })
    .await?;
    state.metrics.verdict();
    Ok((StatusCode::CREATED, Json(verdict_out(&stored))))
}

/// The checked parts of a verdict request: key, threat id, grade, reason.
async fn verdict_request(
    state: &AppState,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<(KeyInfo, u64, Grade, Option<String>)> {
    let key = caller(state, headers).await?;
    let id = threat_id(id)?;
    let (body, _reserved) = read_body(state, headers, body).await?;
    // a JSON object only: serde would also take the fields in order from an array (`["TP"]`)
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("verdict body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "verdict body: expected a JSON object {\"grade\": …, \"reason\": …}",
        ));
    }
    let v: VerdictIn = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("verdict body: {e}")))?;
    let grade = parse_grade(v.grade.trim())?;
    let reason = v
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if let Some(r) = &reason {
        if r.chars().count() > MAX_REASON_CHARS {
            return Err(ApiError::bad_request(format!(
                "reason is {} characters, at most {MAX_REASON_CHARS}",
                r.chars().count()
            )));
        }
    }
    Ok((key, id, grade, reason))
}

// ---- notifications ----------------------------------------------------------------------

/// Answer of `GET /v1/notifications`.
#[derive(Debug, Serialize)]
pub struct NotificationsOut {
    /// the priority threshold applied
    pub min_priority: u8,
    /// threats at or above the threshold that no analyst dismissed (BP or FP as their latest
    /// verdict), all of them: `notifications` holds the first 100
    pub total: u64,
    /// highest first (at most 100)
    pub notifications: Vec<notify::Notification>,
}

/// Most notifications in one answer.
pub const MAX_NOTIFICATIONS: usize = 100;

async fn notifications(
    State(state): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<NotificationsOut>> {
    let key = caller(&state, &headers).await?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_query(&q, &["min_priority"])?;
    let min = parse_bounded(
        &q,
        "min_priority",
        u64::from(state.params.get().notify_priority),
        100,
    )? as u8;
    let engine = state.engine();
    let db = state.db.clone();
    blocking(move || {
        let filter = QueueFilter {
            min_priority: Some(min),
            exclude_dismissed: true,
            ..Default::default()
        };
        let (total, threats) = db.queue(key.tenant, &filter, MAX_NOTIFICATIONS)?;
        let features = &engine.artifact.features;
        let absent = |c: usize, code: u64| features.sentinel(c) == Some(code);
        let mut out = Vec::with_capacity(threats.len());
        for t in &threats {
            let ev = db.threat_evidence(key.tenant, t.scored.key.incident.0)?;
            out.push(notify::notification(&t.scored, &ev, &absent));
        }
        Ok(Json(NotificationsOut {
            min_priority: min,
            total,
            notifications: out,
        }))
    })
    .await
}

// ---- drift ------------------------------------------------------------------------------

async fn drift(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let key = caller(&state, &headers).await?;
    let st = state.clone();
    let out = on_rayon(move || super::drift_status(&st, key.tenant))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(out))
}
