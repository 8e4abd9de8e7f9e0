//! Ballista (feature `distributed`): our functions on every node of a cluster.
//!
//! Ballista ships logical and physical plans between processes and resolves user-defined
//! functions **by name** in each process, so the client, the scheduler and every executor must
//! register `threatrank_features` and `threatrank_score` over the same artifact.
//! `threatrank-scheduler` and `threatrank-executor` are thin wrappers over
//! `ballista-scheduler`/`ballista-executor` that do that ([`scheduler`], [`executor`]); the
//! client side is [`remote_session`]. Every scored row carries the model tag of the node that
//! scored it, and the client refuses a result holding another tag than its own model's
//! (`run::check_model`): a node started with another artifact cannot give a wrong answer
//! silently.
//!
//! Tables are registered by path on the client and read by the executors at that path: on a
//! cluster the input must sit on storage every node sees at the same path (a shared
//! filesystem, or the one machine of a test).

use super::{Engine, FeaturesUdaf, ScoreUdf, SqlError};
use ballista::prelude::SessionContextExt;
use ballista_core::registry::BallistaFunctionRegistry;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::{SessionConfig, SessionContext};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn ballista(e: ballista_core::error::BallistaError) -> SqlError {
    SqlError::DataFusion(datafusion::error::DataFusionError::External(Box::new(e)))
}

/// Our two functions over `engine`.
pub fn functions(engine: &Arc<Engine>) -> (Arc<ScalarUDF>, Arc<AggregateUDF>) {
    (
        Arc::new(ScalarUDF::new_from_impl(ScoreUdf::new(engine.clone()))),
        Arc::new(AggregateUDF::new_from_impl(FeaturesUdaf::new(
            engine.clone(),
        ))),
    )
}

/// A client session on the scheduler at `url` (`df://HOST:PORT`), with the functions,
/// `alerts` and the views.
pub async fn remote_session(
    url: &str,
    engine: Arc<Engine>,
    input: &Path,
) -> Result<SessionContext, SqlError> {
    let state = SessionStateBuilder::new()
        .with_config(SessionConfig::new())
        .with_default_features()
        .build();
    let ctx = SessionContext::remote_with_state(url, state).await?;
    // after the upgrade: Ballista's upgrade replaces the state's function lists
    super::register_functions(&ctx, engine);
    let cols = super::register_alerts(&ctx, input).await?;
    super::create_views(&ctx, &cols).await?;
    Ok(ctx)
}

/// Settings of `threatrank-scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerParams {
    /// address to listen on (127.0.0.1 by default: Ballista's ports have no authentication)
    pub bind: SocketAddr,
    /// seconds without a heartbeat after which an executor is taken as lost
    pub executor_timeout_seconds: u64,
}

/// Runs a scheduler whose sessions know our functions; returns when it stops.
pub async fn scheduler(params: &SchedulerParams, engine: Arc<Engine>) -> Result<(), SqlError> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    let (score, features) = functions(&engine);
    let builder = Arc::new(move |config: SessionConfig| {
        use datafusion::execution::FunctionRegistry;
        // the built-in functions stay (`with_scalar_functions` would replace them)
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        state.register_udf(score.clone())?;
        state.register_udaf(features.clone())?;
        Ok(state)
    });
    let config = SchedulerConfig {
        bind_host: params.bind.ip().to_string(),
        external_host: params.bind.ip().to_string(),
        bind_port: params.bind.port(),
        executor_timeout_seconds: params.executor_timeout_seconds,
        expire_dead_executor_interval_seconds: 1.max(params.executor_timeout_seconds / 4),
        // spread tasks over the executors (Ballista's default fills one first)
        task_distribution: ballista_scheduler::config::TaskDistributionPolicy::RoundRobin,
        ..SchedulerConfig::default()
    }
    .with_override_session_builder(builder);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(ballista)?;
    eprintln!(
        "threatrank-scheduler: model {}, listening on {}",
        engine.model_tag(),
        params.bind
    );
    ballista_scheduler::scheduler_process::start_server(cluster, params.bind, Arc::new(config))
        .await
        .map_err(ballista)
}

/// Settings of `threatrank-executor`.
#[derive(Debug, Clone)]
pub struct ExecutorParams {
    /// host to bind (127.0.0.1 by default)
    pub bind_host: String,
    /// Arrow Flight port (shuffle data)
    pub port: u16,
    /// gRPC port (tasks)
    pub grpc_port: u16,
    /// the scheduler
    pub scheduler_host: String,
    /// the scheduler's port
    pub scheduler_port: u16,
    /// concurrent tasks
    pub vcores: usize,
    /// scratch folder for shuffle files
    pub work_dir: Option<String>,
    /// seconds between heartbeats
    pub heartbeat_seconds: u64,
    /// memory pool of the executor in bytes, split among its vcores (a `FairSpillPool` each,
    /// so aggregations spill as in a local plan); `None`: Ballista's default, 70% of the host's
    /// (or cgroup's) memory; `Some(0)`: unbounded
    pub memory_pool_bytes: Option<u64>,
}

/// Runs an executor whose function registry holds our functions; prints how many incidents
/// it featurized and scored whenever that changes (so operators and tests see each node's
/// share of the work); returns when it stops.
pub async fn executor(params: &ExecutorParams, engine: Arc<Engine>) -> Result<(), SqlError> {
    use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
    let (score, features) = functions(&engine);
    let mut registry = BallistaFunctionRegistry::default();
    registry
        .scalar_functions
        .insert(score.name().to_string(), score);
    registry
        .aggregate_functions
        .insert(features.name().to_string(), features);
    let config = ExecutorProcessConfig {
        bind_host: params.bind_host.clone(),
        external_host: Some(params.bind_host.clone()),
        port: params.port,
        grpc_port: params.grpc_port,
        scheduler_host: params.scheduler_host.clone(),
        scheduler_port: params.scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        vcores: params.vcores.max(1),
        work_dir: params.work_dir.clone(),
        executor_heartbeat_interval_seconds: params.heartbeat_seconds.max(1),
        override_function_registry: Some(Arc::new(registry)),
        memory_pool_size: params.memory_pool_bytes,
        ..ExecutorProcessConfig::default()
    };
    let watch = engine.clone();
    std::thread::spawn(move || {
        let mut last = (0, 0);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let now = (
                watch.featurized.load(Ordering::Relaxed),
                watch.scored.load(Ordering::Relaxed),
            );
            if now != last {
                eprintln!("threatrank-executor: featurized {} scored {}", now.0, now.1);
                last = now;
            }
        }
    });
    eprintln!(
        "threatrank-executor: model {}, flight {}:{}, grpc {}:{}, scheduler {}:{}",
        engine.model_tag(),
        params.bind_host,
        params.port,
        params.bind_host,
        params.grpc_port,
        params.scheduler_host,
        params.scheduler_port
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(ballista)
}
