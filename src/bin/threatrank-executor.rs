//! `threatrank-executor`: a Ballista executor whose function registry holds threatrank's
//! functions. Thin: parse, load the model, run `threatrank::sql::cluster::executor`.
use clap::Parser;
use std::process::ExitCode;

/// Ballista executor with threatrank_features / threatrank_score registered.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Host to bind and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// Arrow Flight port (shuffle data).
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// gRPC port (tasks).
    #[arg(long, default_value_t = 50052)]
    grpc_port: u16,
    /// Scheduler host.
    #[arg(long, default_value = "127.0.0.1")]
    scheduler_host: String,
    /// Scheduler port.
    #[arg(long, default_value_t = 50050)]
    scheduler_port: u16,
    /// Concurrent tasks (default: the machine's cores).
    #[arg(long)]
    vcores: Option<usize>,
    /// Folder for shuffle files (default: a temporary folder).
    #[arg(long)]
    work_dir: Option<String>,
    /// Seconds between heartbeats to the scheduler.
    #[arg(long, default_value_t = 60)]
    heartbeat_seconds: u64,
    /// Memory pool (MiB) split among the vcores; past it, aggregations spill to --work-dir.
    /// Default: Ballista's, 70% of the host's (or cgroup's) memory; 0 = unbounded.
    #[arg(long)]
    memory_pool_mib: Option<u64>,
    /// Model artifact (every node must load the same one).
    #[arg(long, default_value = "models/default.json.gz")]
    model: std::path::PathBuf,
    /// pseudonymization key and external snapshot
    #[command(flatten)]
    signals: threatrank::cli::SignalsArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let engine = std::sync::Arc::new(threatrank::sql::Engine::load(
            &args.model,
            args.signals.knowledge()?,
        )?);
        let params = threatrank::sql::cluster::ExecutorParams {
            bind_host: args.bind_host.clone(),
            port: args.port,
            grpc_port: args.grpc_port,
            scheduler_host: args.scheduler_host.clone(),
            scheduler_port: args.scheduler_port,
            vcores: args
                .vcores
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            work_dir: args.work_dir.clone(),
            heartbeat_seconds: args.heartbeat_seconds,
            memory_pool_bytes: args.memory_pool_mib.map(|m| m.saturating_mul(1 << 20)),
        };
        threatrank::sql::run::runtime()?
            .block_on(threatrank::sql::cluster::executor(&params, engine))?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
