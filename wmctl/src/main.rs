//! `wmctl`: the command-line client of a Webmesh mesh.
//!
//! Exit codes (for scripts): 0 success; 1 a local problem (bad file, bad context);
//! 2 bad command line; 3 the server could not be reached or is unavailable; 4 not
//! found; 5 not authenticated or not permitted; 6 the request was refused as invalid
//! or in the wrong state; 7 any other server error.
//!
//! - `cli`: flags and subcommands
//! - `context`: contexts, the connection, exit codes
//! - `kinds`: each Admin kind described once; get, put, delete over them
//! - `commands`: the rest (status, nodes, graph, snapshot, promote, remove)
//! - `output`: tables, JSON, YAML

mod cli;
mod commands;
mod context;
mod kinds;
mod output;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(context::Fail(code, msg)) => {
            eprintln!("wmctl: {msg}");
            ExitCode::from(code)
        }
    }
}
