//! `threatrank-scheduler`: a Ballista scheduler whose sessions know threatrank's functions.
//! Thin: parse, load the model, run `threatrank::sql::cluster::scheduler`.
use clap::Parser;
use std::process::ExitCode;

/// Ballista scheduler with threatrank_features / threatrank_score registered.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (Ballista's gRPC port has no authentication: keep it private).
    #[arg(long, default_value = "127.0.0.1:50050")]
    bind: std::net::SocketAddr,
    /// Model artifact (every node must load the same one).
    #[arg(long, default_value = "models/default.json.gz")]
    model: std::path::PathBuf,
    /// Seconds without a heartbeat before an executor is taken as lost.
    #[arg(long, default_value_t = 180)]
    executor_timeout_seconds: u64,
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
        let params = threatrank::sql::cluster::SchedulerParams {
            bind: args.bind,
            executor_timeout_seconds: args.executor_timeout_seconds,
        };
        threatrank::sql::run::runtime()?
            .block_on(threatrank::sql::cluster::scheduler(&params, engine))?;
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
