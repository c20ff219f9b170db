//! A minimal AppDaemon client for tests (run as other users with setpriv): one call,
//! its answer as JSON lines on stdout; an error as `CODE: message` on stderr, exit 1.
//!
//!   app-client SOCKET connect [CONFIG-JSON] [--disable-bootstrap]
//!   app-client SOCKET disconnect | status | metrics
//!   app-client SOCKET query get|list|iter KEY
//!   app-client SOCKET subscribe PREFIX COUNT     # the first COUNT events
//!   app-client SOCKET publish KEY VALUE [TTL-SECONDS]
//!
//! SOCKET is a unix socket path, or `https://IP:PORT` for a tcp:// AppDaemon: then
//! `APP_CA` names the CA file to trust and `APP_USER` / `APP_PASSWORD`, if set, go out
//! as auth-basic's headers on every call.

use std::process::ExitCode;

use webmesh_api::v1::app_daemon_client::AppDaemonClient;
use webmesh_api::v1::*;

fn json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}

async fn call(args: &[String]) -> Result<(), tonic::Status> {
    let timeout = Some(std::time::Duration::from_secs(5));
    let ch = if args[0].starts_with("https://") {
        let ca = std::env::var("APP_CA").unwrap_or_default();
        let settings = webmesh_client::tls::TlsSettings {
            ca: Some(ca.into()),
            ..Default::default()
        };
        webmesh_client::tls::Dialer::for_joining(&settings)
            .and_then(|d| d.channel(&args[0], timeout))
    } else {
        webmesh_client::tls::unix_channel(&args[0], timeout)
    }
    .map_err(tonic::Status::unavailable)?;
    let creds: Vec<(&str, String)> = [
        ("x-webmesh-basic-auth-username", "APP_USER"),
        ("x-webmesh-basic-auth-password", "APP_PASSWORD"),
    ]
    .into_iter()
    .filter_map(|(h, var)| std::env::var(var).ok().map(|v| (h, v)))
    .collect();
    let mut c = AppDaemonClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
        for (h, v) in &creds {
            if let Ok(v) = v.parse() {
                r.metadata_mut().insert(*h, v);
            }
        }
        Ok(r)
    });
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "connect" => {
            let config = args
                .get(2)
                .filter(|a| !a.starts_with("--"))
                .map(|j| serde_json::from_str(j).expect("config JSON"));
            let r = c
                .connect(ConnectRequest {
                    config,
                    disable_bootstrap: args.iter().any(|a| a == "--disable-bootstrap"),
                    campfire_uri: String::new(),
                })
                .await?;
            json(r.get_ref());
        }
        "disconnect" => {
            c.disconnect(DisconnectRequest {}).await?;
        }
        "status" => json(c.status(StatusRequest {}).await?.get_ref()),
        "metrics" => json(c.metrics(MetricsRequest {}).await?.get_ref()),
        "query" => {
            let command = match arg(2).as_str() {
                "get" => 0,
                "list" => 1,
                _ => 2,
            };
            let mut s = c
                .query(QueryRequest {
                    command,
                    query: arg(3),
                })
                .await?
                .into_inner();
            while let Some(r) = s.message().await? {
                json(&r);
            }
        }
        "subscribe" => {
            let count: usize = arg(3).parse().unwrap_or(1);
            let mut s = c
                .subscribe(SubscribeRequest { prefix: arg(2) })
                .await?
                .into_inner();
            println!("subscribed");
            for _ in 0..count {
                match s.message().await? {
                    Some(ev) => json(&ev),
                    None => break,
                }
            }
        }
        "publish" => {
            let ttl = args.get(4).map(|s| webmesh_api::wkt::Duration {
                seconds: s.parse().unwrap_or(0),
                nanos: 0,
            });
            c.publish(PublishRequest {
                key: arg(2),
                value: arg(3),
                ttl,
            })
            .await?;
        }
        other => {
            return Err(tonic::Status::invalid_argument(format!(
                "unknown command {other:?}"
            )));
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: app-client SOCKET COMMAND [ARGS]");
        return ExitCode::from(2);
    }
    match call(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(s) => {
            eprintln!("{:?}: {}", s.code(), s.message());
            ExitCode::FAILURE
        }
    }
}
