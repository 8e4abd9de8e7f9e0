//! The scoring service (`threatrank serve`, cargo feature `service`): an HTTP API per tenant
//! that pipelines push alerts into and hunters work from, with analyst verdicts stored in an
//! append-only audit log, drift monitoring and a web page. See `docs/SERVICE.md`.
//!
//! Shape: axum on a tokio runtime answers requests; everything that scores runs on the rayon
//! pool ([`on_rayon`]) and every SQLite call on tokio's blocking pool, so the async runtime
//! never waits on CPU or disk. The model sits behind an `RwLock<Arc<Engine>>`: a request clones
//! the `Arc` once and finishes on that model, so a reload (`SIGHUP`) never drops a request.
//! Every query names the caller's tenant (from its key): another tenant's threats are simply
//! not found.

pub mod api;
pub mod client;
pub mod db;
pub mod metrics;
pub mod notify;
pub mod retrain;

use crate::signals::Knowledge;
use crate::train::{Artifact, ArtifactError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use db::{Db, DbError};

/// Errors of starting or running the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// the model artifact
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// the database
    #[error(transparent)]
    Db(#[from] DbError),
    /// a parameter out of range
    #[error("invalid service parameter `{name}`: {reason}")]
    Param {
        /// parameter
        name: &'static str,
        /// why
        reason: String,
    },
    /// the listening socket or the runtime
    #[error("{what}: {source}")]
    Io {
        /// what failed
        what: String,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// retraining from stored verdicts
    #[error("retrain: {0}")]
    Retrain(String),
}

/// `threatrank serve` parameters (unchecked; see [`ServeParams::check`]).
#[derive(Debug, Clone)]
pub struct ServeParams {
    /// model artifact (reloaded from the same path on SIGHUP)
    pub model: PathBuf,
    /// SQLite database file (created when absent)
    pub db: PathBuf,
    /// listening address (`127.0.0.1:0` picks a free port, printed on stdout)
    pub listen: SocketAddr,
    /// largest request body, bytes (default 8 MiB)
    pub max_body_bytes: usize,
    /// request deadline (default 30 s)
    pub request_timeout: Duration,
    /// time a connection has to send a request's headers, after connecting or after its
    /// previous response (default 10 s); also ends idle keep-alive connections
    pub header_timeout: Duration,
    /// on SIGTERM/SIGINT, how long requests in flight may still run (default 10 s)
    pub shutdown_grace: Duration,
    /// longest text value of an alert (a GUIDE CSV field; a JSONL alert's detector, title,
    /// category, technique, entity type and value), bytes (default 2,048): a longer one
    /// rejects its record, naming the field and the limit
    pub max_text_bytes: usize,
    /// most entities one JSONL alert may carry, each an evidence row (default 256): an alert
    /// with more is rejected naming the limit
    pub max_entities_per_alert: usize,
    /// most evidence rows one request may expand into (default 50,000): a batch over it gets
    /// 413 naming the limit and stores nothing
    pub max_batch_rows: usize,
    /// request bodies held in memory at once, over all requests, bytes (default 64 MiB, at
    /// least `max_body_bytes`): a request waits (within its deadline) until its declared
    /// length fits
    pub max_inflight_body_bytes: usize,
    /// notifications for threats at or above this priority (default 80)
    pub notify_priority: u8,
    /// reasons stored per threat (default 5)
    pub reasons: usize,
    /// verdicts in the drift agreement window (default 200)
    pub drift_window: usize,
    /// threats in the drift population window (default 1,000)
    pub drift_rows: usize,
    /// PSI above which drift warns (default 0.25)
    pub psi_warn: f64,
    /// agreement below which drift warns (default 0.6)
    pub agreement_warn: f64,
    /// fewest tenants behind a released global drift figure (default 5)
    pub min_tenants: u64,
    /// largest share of the rows behind a released global drift figure that one tenant may
    /// hold (dominance rule; default 0.5): above it the figure is withheld, since it would
    /// mostly describe that tenant
    pub max_tenant_share: f64,
    /// SQLite read connections (default 4)
    pub db_readers: usize,
}

impl ServeParams {
    /// Defaults for a model and database.
    pub fn new(model: PathBuf, db: PathBuf) -> ServeParams {
        ServeParams {
            model,
            db,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            max_inflight_body_bytes: 64 << 20,
            max_text_bytes: 2048,
            max_entities_per_alert: 256,
            max_batch_rows: 50_000,
            notify_priority: 80,
            reasons: 5,
            drift_window: 200,
            drift_rows: 1000,
            psi_warn: 0.25,
            agreement_warn: 0.6,
            min_tenants: 5,
            max_tenant_share: 0.5,
            db_readers: 4,
        }
    }

    /// Checks every parameter.
    pub fn check(&self) -> Result<ValidServeParams, ServiceError> {
        let bad = |name, reason: String| Err(ServiceError::Param { name, reason });
        if !(1024..=(1 << 30)).contains(&self.max_body_bytes) {
            return bad(
                "max_body_bytes",
                format!("{} is outside 1 KiB – 1 GiB", self.max_body_bytes),
            );
        }
        if self.request_timeout < Duration::from_millis(1)
            || self.request_timeout > Duration::from_secs(3600)
        {
            return bad(
                "request_timeout",
                format!("{:?} is outside 1 ms – 1 h", self.request_timeout),
            );
        }
        for (name, d) in [
            ("header_timeout", self.header_timeout),
            ("shutdown_grace", self.shutdown_grace),
        ] {
            if d < Duration::from_millis(1) || d > Duration::from_secs(3600) {
                return bad(name, format!("{d:?} is outside 1 ms – 1 h"));
            }
        }
        if self.max_inflight_body_bytes < self.max_body_bytes
            || self.max_inflight_body_bytes > (1 << 40)
        {
            return bad(
                "max_inflight_body_bytes",
                format!(
                    "{} is outside max_body_bytes ({}) – 1 TiB",
                    self.max_inflight_body_bytes, self.max_body_bytes
                ),
            );
        }
        if !(64..=(1 << 20)).contains(&self.max_text_bytes) {
            return bad(
                "max_text_bytes",
                format!("{} is outside 64 – 1 MiB", self.max_text_bytes),
            );
        }
        if !(1..=1_000_000).contains(&self.max_entities_per_alert) {
            return bad(
                "max_entities_per_alert",
                format!("{} is outside 1–1000000", self.max_entities_per_alert),
            );
        }
        if !(1..=100_000_000).contains(&self.max_batch_rows) {
            return bad(
                "max_batch_rows",
                format!("{} is outside 1–100000000", self.max_batch_rows),
            );
        }
        if self.notify_priority > 100 {
            return bad(
                "notify_priority",
                format!("{} is above 100", self.notify_priority),
            );
        }
        if !(1..=20).contains(&self.reasons) {
            return bad("reasons", format!("{} is outside 1–20", self.reasons));
        }
        if !(10..=100_000).contains(&self.drift_window) {
            return bad(
                "drift_window",
                format!("{} is outside 10–100000", self.drift_window),
            );
        }
        if !(30..=1_000_000).contains(&self.drift_rows) {
            return bad(
                "drift_rows",
                format!("{} is outside 30–1000000", self.drift_rows),
            );
        }
        if self.min_tenants < 2 {
            return bad("min_tenants", format!("{} is below 2", self.min_tenants));
        }
        if !(self.max_tenant_share > 0.0 && self.max_tenant_share < 1.0) {
            return bad(
                "max_tenant_share",
                format!("{} is outside (0, 1)", self.max_tenant_share),
            );
        }
        if !(1..=64).contains(&self.db_readers) {
            return bad("db_readers", format!("{} is outside 1–64", self.db_readers));
        }
        // the drift library checks its own thresholds
        let drift = crate::drift::DriftParams::default()
            .psi_warn(self.psi_warn)
            .agreement_warn(self.agreement_warn)
            .window(self.drift_window)
            .min_verdicts(self.drift_window.min(30))
            .check()
            .map_err(|e| ServiceError::Param {
                name: "drift",
                reason: e.to_string(),
            })?;
        Ok(ValidServeParams(self.clone(), drift))
    }
}

/// Checked [`ServeParams`], with the drift parameters they imply.
#[derive(Debug, Clone)]
pub struct ValidServeParams(ServeParams, crate::drift::DriftValidParams);

impl ValidServeParams {
    /// The checked values.
    pub fn get(&self) -> &ServeParams {
        &self.0
    }

    /// Drift thresholds and windows (from `psi_warn`, `agreement_warn`, `drift_window`).
    pub fn drift(&self) -> &crate::drift::DriftValidParams {
        &self.1
    }
}

/// A loaded model: artifact, knowledge tables, and the SHA-256 of the file it came from.
#[derive(Debug)]
pub struct Engine {
    /// the artifact
    pub artifact: Artifact,
    /// ATT&CK, Sigma, groups, pseudonym key, optional snapshot
    pub knowledge: Knowledge,
    /// SHA-256 of the artifact file (hex)
    pub sha256: String,
    /// when it was loaded (Unix seconds)
    pub loaded_at: i64,
}

impl Engine {
    /// Loads and checks an artifact (format, schema, pseudonym key).
    pub fn load(path: &Path, knowledge: Knowledge) -> Result<Engine, ServiceError> {
        let bytes = std::fs::read(path).map_err(|source| ArtifactError::Io {
            file: path.display().to_string(),
            source,
        })?;
        let sha256 = crate::matrix::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let artifact = Artifact::load(path)?;
        if knowledge.snapshot.is_none() {
            artifact
                .features
                .global_signals()
                .check_key(&knowledge.key)
                .map_err(|e| ServiceError::Param {
                    name: "signals_key",
                    reason: format!("{}: {e}", path.display()),
                })?;
        }
        Ok(Engine {
            artifact,
            knowledge,
            sha256,
            loaded_at: db::now(),
        })
    }
}

/// Shared state of a running service.
pub struct AppState {
    /// checked parameters
    pub params: ValidServeParams,
    /// the model in use
    pub engine: RwLock<Arc<Engine>>,
    /// the database
    pub db: Arc<Db>,
    /// counters
    pub metrics: metrics::Metrics,
    /// one writer per tenant at a time for alert batches (re-scoring reads then writes a
    /// tenant's threats)
    tenant_locks: std::sync::Mutex<std::collections::HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// request bodies in memory, KiB permits (`max_inflight_body_bytes`)
    body_budget: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// State over a loaded engine and an open database.
    pub fn new(params: ValidServeParams, engine: Engine, db: Db) -> AppState {
        let budget = params.get().max_inflight_body_bytes.div_ceil(1024);
        AppState {
            params,
            engine: RwLock::new(Arc::new(engine)),
            db: Arc::new(db),
            metrics: metrics::Metrics::default(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(budget)),
            tenant_locks: Default::default(),
        }
    }

    /// The model now in use (requests keep the one they started with).
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the model file again and swaps it in; the old model stays on error.
    pub fn reload(&self) -> Result<Arc<Engine>, ServiceError> {
        let kn = self.engine().knowledge.clone();
        match Engine::load(&self.params.get().model, kn) {
            Ok(e) => {
                let e = Arc::new(e);
                *self.engine.write().unwrap_or_else(|p| p.into_inner()) = e.clone();
                self.metrics.reload(true);
                Ok(e)
            }
            Err(err) => {
                self.metrics.reload(false);
                Err(err)
            }
        }
    }

    /// Reserves room for a body of up to `bytes` among the bodies in memory; waits while
    /// other requests hold the budget. The reservation ends when the permit is dropped.
    async fn reserve_body(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        // never closed, so acquiring only waits
        self.body_budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the body budget is never closed")
    }

    fn tenant_lock(&self, tenant: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.tenant_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant)
            .or_default()
            .clone()
    }
}

/// Runs `f` on the rayon pool and awaits its result without blocking the async runtime; a
/// panic in `f` comes back as `Err`.
pub async fn on_rayon<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r.map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "worker panicked".into())
        }));
    });
    rx.await.unwrap_or_else(|_| Err("worker dropped".into()))
}

/// Starts the service and serves until SIGINT/SIGTERM. Prints `listening on http://ADDR` on
/// stdout once the socket is bound (with port 0, the port picked). SIGHUP reloads the model.
pub fn serve(params: &ServeParams, knowledge: Knowledge) -> Result<(), ServiceError> {
    let valid = params.check()?;
    let engine = Engine::load(&params.model, knowledge)?;
    let db = Db::open(&params.db, params.db_readers)?;
    let state = Arc::new(AppState::new(valid, engine, db));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServiceError::Io {
            what: "tokio runtime".into(),
            source,
        })?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(params.listen)
            .await
            .map_err(|source| ServiceError::Io {
                what: format!("bind {}", params.listen),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServiceError::Io {
            what: "local address".into(),
            source,
        })?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on http://{addr}");
            let _ = out.flush();
        }
        let reloader = state.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let s = reloader.clone();
                match tokio::task::spawn_blocking(move || s.reload()).await {
                    Ok(Ok(e)) => eprintln!("model reloaded: sha256 {}", e.sha256),
                    Ok(Err(e)) => eprintln!("model reload failed, old model kept: {e}"),
                    Err(e) => eprintln!("model reload failed, old model kept: {e}"),
                }
            }
        });
        let app = api::router(state);
        serve_until_signal(listener, app, params.header_timeout, params.shutdown_grace).await;
        Ok(())
    });
    // tasks still running after the grace period (a stalled body read, a scoring job) are
    // dropped with the runtime and the process ends: each SQLite write is one transaction,
    // and a batch retried after a restart stores nothing twice and is scored again
    rt.shutdown_timeout(Duration::from_millis(500));
    result
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let t = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = t => {},
    }
}

/// Accepts HTTP/1.1 connections until SIGINT/SIGTERM, then stops accepting, lets requests in
/// flight finish for at most `grace`, and returns (connections still open are dropped).
///
/// Every connection must send a request's headers within `header_timeout` of connecting or of
/// its previous response (hyper's header-read timer, which also ends idle keep-alive
/// connections): a client that connects and says nothing, or trickles its headers, is closed
/// instead of holding a task and a socket forever. Bodies are read by the handlers after the
/// key is checked, under the request deadline (`api` module).
async fn serve_until_signal(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    grace: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    // `stop` tells connections to finish their request and close; every connection task holds
    // a clone of `open`, so `open_tx.closed()` resolves when the last one has ended
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // out of file descriptors and the like: back off instead of spinning
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let mut stop_rx = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // the one change is false -> true (and the sender outlives every connection)
                _ = stop_rx.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    if tokio::time::timeout(grace, open_tx.closed()).await.is_err() {
        eprintln!(
            "shutdown: {} connection(s) still busy after {} s; closing them",
            open_tx.receiver_count(),
            grace.as_secs_f64()
        );
    }
}

/// Drift of one tenant's (and, above the tenant floor, all tenants') recent threats against
/// the model's training snapshot: the `GET /v1/drift` answer.
pub fn drift_status(state: &AppState, tenant: u64) -> Result<serde_json::Value, api::ApiError> {
    use crate::drift::{Agreement, DriftCounts};
    use db::Spread;
    let engine = state.engine();
    let p = state.params.get();
    let thresholds = serde_json::json!({
        "psi_warn": p.psi_warn,
        "agreement_warn": p.agreement_warn,
        "window_verdicts": p.drift_window,
        "window_threats": p.drift_rows,
        "min_tenants_global": p.min_tenants,
        "max_tenant_share_global": p.max_tenant_share,
    });
    let Some(reference) = engine.artifact.reference.as_ref() else {
        return Ok(serde_json::json!({
            "status": "unavailable",
            "warnings": ["the model carries no training snapshot (trained without calibration, or before drift monitoring existed): retrain it to monitor drift"],
            "global": null,
            "thresholds": thresholds,
        }));
    };
    let params = state.params.drift();
    let internal = |e: crate::drift::DriftError| api::ApiError::internal(format!("drift: {e}"));
    let window =
        |t: Option<u64>| -> Result<(DriftCounts, Agreement, Spread, Spread), api::ApiError> {
            let pop = state.db.recent_features(t, p.drift_rows)?;
            let mut counts = DriftCounts::new(reference);
            for (row, p_tp) in &pop.rows {
                counts.add(row, *p_tp).map_err(internal)?;
            }
            let (verdicts, vt) = state.db.recent_verdicts(t, p.drift_window)?;
            let agreement = Agreement::from_pairs(verdicts.iter().map(|v| (v.predicted, v.grade)));
            Ok((counts, agreement, pop.spread, vt))
        };
    let (counts, agreement, _, _) = window(Some(tenant))?;
    let mine = reference
        .report_for(Some(tenant), &counts, Some(agreement), params)
        .map_err(internal)?;
    let (counts, agreement, rows, verdicts) = window(None)?;
    // floor and dominance: enough tenants, none holding more than the stated share
    let releasable = |s: &Spread| s.tenants >= p.min_tenants && s.max_share() <= p.max_tenant_share;
    let global = if releasable(&rows) {
        let agreement = releasable(&verdicts).then_some(agreement);
        let g = reference
            .report_for(None, &counts, agreement, params)
            .map_err(internal)?;
        // released without counts: rates and PSI only (the global texts name no count)
        serde_json::json!({
            "status": g.status,
            "score_psi": g.score_psi,
            "score_psi_threshold": g.score_psi_threshold,
            "feature_psi_max": g.feature_psi_max,
            "top_features": g.top_features,
            "informational_features": g.informational_features,
            "baseline": g.baseline,
            "agreement": g.agreement.as_ref().and_then(|a| a.rate()).map(|r| serde_json::json!({"rate": r})),
            "warnings": g.warnings,
            "notes": g.notes,
        })
    } else {
        serde_json::Value::Null
    };
    let mut out =
        serde_json::to_value(&mine).map_err(|e| api::ApiError::internal(e.to_string()))?;
    out["global"] = global;
    out["thresholds"] = thresholds;
    Ok(out)
}
