//! `chatup-bench`: a load generator for chatup, for capacity planning.
//!
//! Layout:
//! - [`scenario`]: idle, fanout, rooms, publish and floor runs, and their one-line JSON result.
//! - [`restart`]: a fan-out's sidecar restart (`--restart-sidecar-at`) and what it measures.
//! - [`stack`]: the server under test (hosts the bench starts from `build/`, one with the
//!   memory broker or several sharing a Redis, or `--url`).
//! - [`load`]: subscriber load spread over child processes and source addresses.
//! - [`publish`]: publishers on the real path (`/pub` through nginx to the sidecar).
//! - [`floor`]: the minimal server that measures what the kernel alone costs per delivery.
//! - [`report`]: the results section of BENCHMARKS.md, targets marked met or missed.
//! - [`viewer`], [`wsclient`], [`sseclient`], [`pollclient`]: the lean subscriber clients,
//!   one per transport.
//! - [`payload`], [`procfs`]: the message stamp, and what is read from /proc (CPU, RSS,
//!   steal).
//!
//! Progress goes to stderr once a second; the result is one JSON line on stdout (one per
//! transport when several are asked for).
#![forbid(unsafe_code)]

mod failover;
mod floor;
mod load;
mod payload;
mod pollclient;
mod procfs;
mod publish;
mod report;
mod restart;
mod scenario;
mod sseclient;
mod stack;
mod viewer;
mod wsclient;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Everything that can stop a run, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Parser)]
#[command(
    name = "chatup-bench",
    version,
    about = "Load generator for chatup: idle subscribers, fan-out, rooms, publishers, and the \
             kernel floor",
    long_about = "Load generator for chatup. By default it starts its own stack (nginx with the \
                  module and chatup-sidecar from build/) on free loopback ports; with --broker \
                  redis --hosts N it starts N such hosts sharing a Redis (its own, or \
                  --redis-url); with --url it measures a chatup that is already running. \
                  Progress goes to stderr; the result is one JSON line on stdout."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // Boxed: a scenario's arguments are several times larger than the other commands'.
    #[command(flatten)]
    Scenario(Box<scenario::Scenario>),
    /// Writes the results section of BENCHMARKS.md from a file of result lines.
    Report(report::ReportArgs),
    /// (internal) one subscriber load process.
    #[command(hide = true)]
    Load(load::LoadArgs),
    /// (internal) the floor's minimal server.
    #[command(hide = true)]
    FloorServer,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => load::run_child(args),
        Command::FloorServer => floor::run_server(),
        Command::Report(args) => report::run(&args),
        Command::Scenario(scenario) => run_scenario(*scenario),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatup-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `line` to stdout as one JSON line: how the bench's child processes (load and
/// floor server) speak to it.
fn emit_line(line: &impl serde::Serialize) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, line)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn run_scenario(scenario: scenario::Scenario) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let lines = runtime.block_on(scenario.run())?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut gaps = 0;
    for mut line in lines {
        line["machine"] = procfs::machine_summary().into();
        line["command"] = command.clone().into();
        gaps += line["gaps"].as_u64().unwrap_or(0);
        println!("{line}");
    }
    // The figures are printed all the same; a skipped id is a server bug, not noise.
    if gaps > 0 {
        return Err(BenchError::Protocol(format!(
            "viewers missed messages: {gaps} gaps in their ids"
        )));
    }
    Ok(())
}
