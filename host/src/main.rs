//! `webmesh`: run a mesh node.

use std::process::ExitCode;

use webmesh::config::{self, Config};
use webmesh::node::Node;

const QUIET: &str =
    "openraft=error,openraft::replication=off,defguard_wireguard_rs=warn,defguard_boringtun=error";

fn main() -> ExitCode {
    let matches = match config::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line naming the flag and the value.
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("bad arguments");
            eprintln!("webmesh: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::from_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("webmesh: {e}");
            return ExitCode::from(2);
        }
    };
    if matches.get_flag("print-config") {
        print!("{}", cfg.to_yaml());
        return ExitCode::SUCCESS;
    }
    // openraft narrates every election, and logs an error per retry to an unreachable
    // member; defguard and boringtun narrate every peer. Quiet unless asked for.
    let filter = if cfg.log_level.contains("openraft") {
        cfg.log_level.clone()
    } else {
        format!("{},{QUIET}", cfg.log_level)
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("webmesh: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(run(cfg));
    // Leaving, Raft and storage are done by now; do not wait on stragglers (e.g. a
    // WireGuard control-socket read) to exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webmesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a signal during start-up (say, while joining) must still end in
    // an orderly shutdown, not the default instant exit.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let start = Node::start(cfg);
    tokio::pin!(start);
    let (node, early) = tokio::select! {
        res = &mut start => (res?, false),
        _ = term.recv() => (start.await?, true),
        _ = int.recv() => (start.await?, true),
    };
    if !early {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
