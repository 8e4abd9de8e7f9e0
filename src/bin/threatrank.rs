//! `threatrank` binary: parse, call the library, map errors to exit codes.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = threatrank::cli::Cli::parse();
    match threatrank::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            for line in threatrank::cli::error_lines(&e) {
                eprintln!("{line}");
            }
            ExitCode::from(match e {
                threatrank::pipeline::PipelineError::Ingest(_)
                | threatrank::pipeline::PipelineError::Input { .. } => 2,
                threatrank::pipeline::PipelineError::Synth(ref s) if s.is_input() => 2,
                threatrank::pipeline::PipelineError::Artifact(_) => 3,
                #[cfg(feature = "kafka")]
                threatrank::pipeline::PipelineError::Kafka(
                    threatrank::kafka::KafkaError::Model(_),
                ) => 3,
                _ => 1,
            })
        }
    }
}
