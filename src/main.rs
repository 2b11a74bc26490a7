//! The `peerwire` program: `peerwire demo` runs a local cluster and reports throughput and
//! latency; `peerwire node` runs one chat node. Logs go to stderr (`RUST_LOG`, default `info`),
//! user-facing output to stdout.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let (level, format) = match cli.logging() {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match level {
        Some(directives) => match EnvFilter::builder().parse(&directives) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!(
                    "error: --log-level {directives:?}: {e}; expected a level (error, warn, info, \
                     debug, trace) or directives such as peerwire=debug,info"
                );
                return ExitCode::from(2);
            }
        },
        None => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .from_env_lossy(),
    };
    // Only fails if a subscriber is already installed, which cannot happen this early.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        cli::LogFormat::Json => builder.json().try_init(),
        cli::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if e.downcast_ref::<cli::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
