//! Keeping a process plugin running.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use webmesh_plugin_sdk::Config as PluginConfig;

use super::*;

/// Resolves once shutdown has begun.
pub(super) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Keeps one process plugin running: restarts it with backoff when it exits, then
/// configures it and reopens its querier; stops it on shutdown.
pub(super) struct Supervisor {
    pub(super) handle: Arc<PluginHandle>,
    pub(super) path: PathBuf,
    pub(super) dir: PathBuf,
    /// The plugin's private directory under the data dir.
    pub(super) state: Option<PathBuf>,
    pub(super) config: PluginConfig,
    pub(super) replica: super::querier::StateSlot,
    pub(super) stop: Arc<watch::Sender<bool>>,
}

impl Supervisor {
    pub(super) async fn run(self, mut child: tokio::process::Child) {
        let name = self.handle.name.clone();
        let mut backoff = process::Backoff::new();
        let mut started = Instant::now();
        loop {
            let stopped = stopped(self.stop.subscribe());
            tokio::pin!(stopped);
            tokio::select! {
                status = child.wait() => {
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    let delay = backoff.delay(started.elapsed());
                    tracing::warn!(plugin = %name, %status, restart_in = ?delay, "plugin exited");
                    if self.sleep_or_stop(delay).await {
                        return;
                    }
                    match self.restart().await {
                        Ok(c) => {
                            child = c;
                            started = Instant::now();
                            crate::metrics::get()
                                .plugin_restarts
                                .get_or_create(&crate::metrics::PluginName {
                                    plugin: name.clone(),
                                })
                                .inc();
                            tracing::info!(plugin = %name, "plugin restarted");
                        }
                        Err(e) => {
                            tracing::error!(plugin = %name, error = %e, "plugin restart failed");
                            // Go round again: the exited child's wait returns at once.
                            started = Instant::now();
                        }
                    }
                }
                _ = &mut stopped => {
                    process::stop(&mut child, Duration::from_secs(2)).await;
                    return;
                }
            }
        }
    }

    /// True when shutdown came first.
    async fn sleep_or_stop(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = stopped(self.stop.subscribe()) => true,
        }
    }

    async fn restart(&self) -> Result<tokio::process::Child, StartError> {
        let launched = process::launch(
            &self.handle.name,
            &self.path,
            &self.dir,
            self.state.as_deref(),
            HANDSHAKE_TIMEOUT,
        )
        .await?;
        let mut child = launched.child;
        let configured = async {
            self.handle.get_info().await?;
            self.handle.configure(&self.config).await
        };
        if let Err(e) = configured.await {
            process::stop(&mut child, Duration::from_secs(1)).await;
            return Err(StartError::Rpc {
                plugin: self.handle.name.clone(),
                target: self.handle.target.to_string(),
                reason: e.message().to_string(),
            });
        }
        querier::open(self.handle.clone(), self.replica.clone());
        Ok(child)
    }
}
