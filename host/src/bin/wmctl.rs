//! `wmctl`: the command-line client of a Webmesh mesh.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tonic::transport::Endpoint;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::{ClusterStatus, Feature, GetStatusRequest};

#[derive(Parser)]
#[command(name = "wmctl", version = webmesh::version::LONG, about = "Command-line client of a Webmesh mesh.")]
struct Cli {
    /// gRPC address of a mesh node.
    #[arg(
        long,
        short = 's',
        env = "WMCTL_SERVER",
        default_value = "127.0.0.1:8443",
        global = true
    )]
    server: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// Per-call timeout in seconds.
    #[arg(long, default_value_t = 10, global = true)]
    timeout: u64,
    /// A request header for the node's AUTH plugin, KEY=VALUE (repeatable), e.g.
    /// `authorization=Bearer TOKEN`.
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE", global = true)]
    headers: Vec<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Cmd {
    /// Status of a node (the one at --server, or NODE through it).
    Status {
        /// Node ID; empty for the node at --server.
        node: Option<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wmctl: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: &Cli) -> Result<(), String> {
    let url = if cli.server.contains("://") {
        cli.server.clone()
    } else {
        format!("http://{}", cli.server)
    };
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad --server {:?}: {e}", cli.server))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(cli.timeout))
        .connect()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    match &cli.command {
        Cmd::Status { node } => {
            let mut req = tonic::Request::new(GetStatusRequest {
                id: node.clone().unwrap_or_default(),
            });
            for h in &cli.headers {
                let (k, v) = h
                    .split_once('=')
                    .ok_or_else(|| format!("bad --header {h:?}: must be KEY=VALUE"))?;
                let key = tonic::metadata::MetadataKey::from_bytes(
                    k.trim().to_ascii_lowercase().as_bytes(),
                )
                .map_err(|_| format!("bad --header {h:?}: {k:?} is not a header name"))?;
                let value = v.parse().map_err(|_| {
                    format!("bad --header {h:?}: the value must be printable ASCII")
                })?;
                req.metadata_mut().insert(key, value);
            }
            let status = NodeClient::new(channel)
                .get_status(req)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            match cli.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
                ),
                Output::Yaml => print!(
                    "{}",
                    serde_norway::to_string(&status).map_err(|e| e.to_string())?
                ),
                Output::Table => {
                    let cluster = ClusterStatus::try_from(status.cluster_status)
                        .map(|c| c.as_str_name())
                        .unwrap_or("?");
                    let features: Vec<&str> = status
                        .features
                        .iter()
                        .filter_map(|f| Feature::try_from(*f).ok().map(|f| f.as_str_name()))
                        .collect();
                    let rows = [
                        ("ID", status.id.clone()),
                        (
                            "VERSION",
                            format!(
                                "{} ({}, {})",
                                status.version, status.commit, status.build_date
                            ),
                        ),
                        ("UPTIME", status.uptime.clone()),
                        ("CLUSTER STATUS", cluster.to_string()),
                        ("LEADER", status.current_leader.clone()),
                        ("TERM", status.current_term.to_string()),
                        ("LAST LOG INDEX", status.last_log_index.to_string()),
                        ("LAST APPLIED", status.last_applied.to_string()),
                        ("FEATURES", features.join(",")),
                    ];
                    for (k, v) in rows {
                        println!("{k:<15} {v}");
                    }
                    if let Some(m) = &status.interface_metrics {
                        println!(
                            "{:<15} {} ({} peers, rx {} B, tx {} B)",
                            "INTERFACE",
                            m.device_name,
                            m.num_peers,
                            m.total_receive_bytes,
                            m.total_transmit_bytes
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
