//! The bounded event queue, the delivery thread and the watch calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use webmesh_plugin_sdk::{Config, Error, Info, Plugin, Setting, WatchPlugin, async_trait, v1};

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
pub struct Webhook {
    queue: Mutex<Option<SyncSender<String>>>,
    counters: Arc<Counters>,
}

struct Settings {
    url: String,
    retries: u32,
    timeout: Duration,
}

fn deliver(rx: Receiver<String>, s: Settings, counters: Arc<Counters>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(s.timeout))
        .build()
        .into();
    for body in rx {
        let mut delay = Duration::from_millis(100);
        let mut last = String::new();
        let mut ok = false;
        for _ in 0..=s.retries {
            match agent
                .post(&s.url)
                .content_type("application/json")
                .send(body.as_str())
            {
                Ok(_) => {
                    ok = true;
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    eprintln!("POST {} failed: {last}; retrying in {delay:?}", s.url);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        if ok {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            let n = counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            eprintln!(
                "dropped an event after {} tries ({n} dropped so far): {}: {last}",
                s.retries + 1,
                s.url
            );
        }
    }
}

#[async_trait]
impl Plugin for Webhook {
    fn info(&self) -> Info {
        Info::new(
            "watch-webhook",
            env!("CARGO_PKG_VERSION"),
            "POSTs mesh events as JSON to a URL",
        )
    }

    fn settings(&self) -> &'static [Setting] {
        &[
            Setting {
                key: "url",
                default: "",
                help: "where events are POSTed (http://, or https:// with the tls feature)",
            },
            Setting {
                key: "retries",
                default: "5",
                help: "attempts per event after the first (at most 20)",
            },
            Setting {
                key: "timeout",
                default: "5",
                help: "seconds per attempt (1-300)",
            },
            Setting {
                key: "queue",
                default: "1000",
                help: "events waiting to be sent, at most; more are dropped and counted",
            },
        ]
    }

    async fn configure(&self, config: Config) -> Result<(), Error> {
        let url = config.required_str("url")?;
        let https = url.starts_with("https://");
        if !(url.starts_with("http://") || https) {
            return Err(Error::invalid_argument(format!(
                "config key url: {url:?} is not an http:// or https:// URL"
            )));
        }
        if https && !cfg!(feature = "tls") {
            return Err(Error::invalid_argument(format!(
                "config key url: {url:?}: this build has no TLS; build with --features tls"
            )));
        }
        let settings = Settings {
            url,
            retries: config.u64("retries")?.unwrap_or(5).min(20) as u32,
            timeout: Duration::from_secs(config.u64("timeout")?.unwrap_or(5).clamp(1, 300)),
        };
        let size = config.u64("queue")?.unwrap_or(1000).clamp(1, 1_000_000) as usize;
        let (tx, rx) = sync_channel(size);
        let counters = self.counters.clone();
        std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || deliver(rx, settings, counters))
            .map_err(|e| Error::internal(format!("cannot start the sender: {e}")))?;
        // A reconfigure replaces the queue; the old sender drains and ends.
        *self.queue.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(())
    }

    async fn close(&self) -> Result<(), Error> {
        eprintln!(
            "sent {}, dropped {}",
            self.counters.sent.load(Ordering::Relaxed),
            self.counters.dropped.load(Ordering::Relaxed)
        );
        Ok(())
    }

    fn watch(&self) -> Option<&dyn WatchPlugin> {
        Some(self)
    }
}

#[async_trait]
impl WatchPlugin for Webhook {
    async fn emit(&self, event: v1::Event) -> Result<(), Error> {
        let body = serde_json::to_string(&event)
            .map_err(|e| Error::internal(format!("encoding the event: {e}")))?;
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let q = q
            .as_ref()
            .ok_or_else(|| Error::failed_precondition("watch-webhook is not configured"))?;
        match q.try_send(body) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                eprintln!("queue full: event dropped ({n} dropped so far)");
                // Accepted and dropped: the node must not retry into a full queue.
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => {
                Err(Error::unavailable("the sender thread is gone"))
            }
        }
    }
}
