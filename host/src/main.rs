//! `webmesh`: run a mesh node.

use std::process::ExitCode;

use webmesh::config::{self, Config};
use webmesh::node::{Node, NodeError};

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
    webmesh::node::init_logging(&cfg.log_level);
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
    if cfg.app_daemon_listen.is_some() {
        return Ok(webmesh::node::daemon::run(cfg).await?);
    }
    // Handlers first: a signal during start-up (say, while joining) must end it in an
    // orderly way, not with the default instant exit.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let start = Node::start(cfg, cancelled);
    tokio::pin!(start);
    let node = tokio::select! {
        res = &mut start => res?,
        _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
            let _ = cancel.send(true);
            match start.await {
                Err(NodeError::Cancelled) => return Ok(()),
                other => other?,
            }
        }
    };
    if !*cancel.borrow() {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
