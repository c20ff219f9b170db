//! The commands that are not Admin kinds: status, nodes, the graph, snapshots,
//! promoting and removing nodes; and the dispatch of every command.

use std::path::Path;

use clap::CommandFactory;
use webmesh_api::v1::mesh_client::MeshClient;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::{
    ClusterStatus, Feature, GetNodeRequest, GetStatusRequest, LeaveRequest, SnapshotRequest,
    UpdateRequest,
};

use crate::cli::{Cli, Cmd, GetKind, Kind, Output};
use crate::context::{Conn, Fail, connect, local, rpc, settings};
use crate::output::print;
use crate::{kinds, with_kind};

pub async fn run(cli: &Cli) -> Result<(), Fail> {
    if let Cmd::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "wmctl", &mut std::io::stdout());
        return Ok(());
    }
    let ctx = settings(cli)?;
    let conn = connect(cli, &ctx).await?;
    let node = || NodeClient::new(conn.channel.clone());
    match &cli.command {
        Cmd::Completions { .. } => Ok(()),
        Cmd::Status { node } => status(cli, &conn, node.clone().unwrap_or_default()).await,
        Cmd::Get { kind, name, svg } => match admin_kind(*kind) {
            Some(k) => {
                with_kind!(k, T => kinds::get::<T>(&conn, cli.output, name.as_deref()).await)
            }
            None => get(cli, &conn, *kind, name.as_deref(), svg.as_deref()).await,
        },
        Cmd::Put { kind, args } => with_kind!(*kind, T => kinds::put::<T>(&conn, args).await),
        Cmd::Delete { kind, name } => with_kind!(*kind, T => kinds::delete::<T>(&conn, name).await),
        Cmd::Snapshot { out } => {
            let snap = node()
                .snapshot(conn.req(SnapshotRequest::default()))
                .await
                .map_err(rpc)?
                .into_inner();
            std::fs::write(out, &snap.snapshot)
                .map_err(|e| local(format!("{}: {e}", out.display())))?;
            eprintln!("wrote {} ({} bytes)", out.display(), snap.snapshot.len());
            Ok(())
        }
        Cmd::Promote { nodes } => {
            for id in nodes {
                let req = UpdateRequest {
                    id: id.clone(),
                    as_voter: true,
                    ..Default::default()
                };
                node().update(conn.req(req)).await.map_err(rpc)?;
                eprintln!("{id} is a voter");
            }
            Ok(())
        }
        Cmd::Remove { nodes } => {
            for id in nodes {
                let req = LeaveRequest { id: id.clone() };
                node().leave(conn.req(req)).await.map_err(rpc)?;
                eprintln!("{id} removed");
            }
            Ok(())
        }
    }
}

/// The Admin kind a `get` names, if it names one.
fn admin_kind(k: GetKind) -> Option<Kind> {
    Some(match k {
        GetKind::Roles => Kind::Roles,
        GetKind::Rolebindings => Kind::Rolebindings,
        GetKind::Groups => Kind::Groups,
        GetKind::Networkacls => Kind::Networkacls,
        GetKind::Routes => Kind::Routes,
        GetKind::Edges => Kind::Edges,
        GetKind::Nodes | GetKind::Graph => return None,
    })
}

async fn status(cli: &Cli, conn: &Conn, id: String) -> Result<(), Fail> {
    let resp = NodeClient::new(conn.channel.clone())
        .get_status(conn.req(GetStatusRequest { id }))
        .await
        .map_err(rpc)?;
    // Comma-separated items of a response header (v1's Status has no field for them).
    let list = |name: &str| -> Vec<String> {
        resp.metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    // The node's other services (metrics, mesh DNS), and how each ICE peer is reached
    // (direct, through a TURN relay, or the mesh).
    let endpoints = list("x-webmesh-endpoints");
    let paths = list("x-webmesh-ice-paths");
    let status = resp.into_inner();
    print(cli.output, &status, || {
        let cluster = ClusterStatus::try_from(status.cluster_status)
            .map(|c| c.as_str_name())
            .unwrap_or("?");
        let features: Vec<&str> = status
            .features
            .iter()
            .filter_map(|f| Feature::try_from(*f).ok().map(|f| f.as_str_name()))
            .collect();
        let mut rows = vec![
            vec!["ID".into(), status.id.clone()],
            vec![
                "VERSION".into(),
                format!(
                    "{} ({}, {})",
                    status.version, status.commit, status.build_date
                ),
            ],
            vec!["UPTIME".into(), status.uptime.clone()],
            vec!["CLUSTER STATUS".into(), cluster.to_string()],
            vec!["LEADER".into(), status.current_leader.clone()],
            vec!["TERM".into(), status.current_term.to_string()],
            vec!["LAST LOG INDEX".into(), status.last_log_index.to_string()],
            vec!["LAST APPLIED".into(), status.last_applied.to_string()],
            vec!["FEATURES".into(), features.join(",")],
        ];
        for e in &endpoints {
            let (what, addr) = e.split_once('=').unwrap_or(("ENDPOINT", e));
            rows.push(vec![what.to_uppercase(), addr.to_string()]);
        }
        for p in &paths {
            let (peer, path) = p.split_once('=').unwrap_or((p, "?"));
            let shown = match path.split_once(':') {
                Some((kind, addr)) => format!("{kind} ({addr})"),
                None => path.replace('-', " "),
            };
            rows.push(vec![format!("ICE PATH {peer}"), shown]);
        }
        if let Some(m) = &status.interface_metrics {
            rows.push(vec![
                "INTERFACE".into(),
                format!(
                    "{} ({} peers, rx {} B, tx {} B)",
                    m.device_name, m.num_peers, m.total_receive_bytes, m.total_transmit_bytes
                ),
            ]);
        }
        rows
    })
}

/// `get nodes` and `get graph` (the Mesh service).
async fn get(
    cli: &Cli,
    conn: &Conn,
    kind: GetKind,
    name: Option<&str>,
    svg: Option<&Path>,
) -> Result<(), Fail> {
    let out = cli.output;
    match kind {
        GetKind::Nodes => {
            let mut mesh = MeshClient::new(conn.channel.clone());
            let nodes = match name {
                Some(id) => vec![
                    mesh.get_node(conn.req(GetNodeRequest { id: id.into() }))
                        .await
                        .map_err(rpc)?
                        .into_inner(),
                ],
                None => {
                    mesh.list_nodes(conn.req(()))
                        .await
                        .map_err(rpc)?
                        .into_inner()
                        .nodes
                }
            };
            let table = || {
                let mut rows = vec![
                    [
                        "ID",
                        "STATUS",
                        "IPV4",
                        "IPV6",
                        "ENDPOINT",
                        "ZONE",
                        "PUBLIC KEY",
                    ]
                    .map(String::from)
                    .to_vec(),
                ];
                rows.extend(nodes.iter().map(|n| {
                    vec![
                        n.id.clone(),
                        match ClusterStatus::try_from(n.cluster_status) {
                            Ok(ClusterStatus::ClusterLeader) => "leader",
                            Ok(ClusterStatus::ClusterVoter) => "voter",
                            Ok(ClusterStatus::ClusterNonVoter) => "observer",
                            _ => "-",
                        }
                        .into(),
                        n.private_ipv4.clone(),
                        n.private_ipv6.clone(),
                        n.primary_endpoint.clone(),
                        n.zone_awareness_id.clone(),
                        n.public_key.clone(),
                    ]
                }));
                rows
            };
            if name.is_some() {
                print(out, &nodes[0], table)
            } else {
                print(out, &serde_json::json!({ "nodes": nodes }), table)
            }
        }
        GetKind::Graph => {
            let g = MeshClient::new(conn.channel.clone())
                .get_mesh_graph(conn.req(()))
                .await
                .map_err(rpc)?
                .into_inner();
            if let Some(file) = svg {
                let mut child = std::process::Command::new("dot")
                    .args(["-Tsvg", "-o"])
                    .arg(file)
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        local(format!(
                            "--svg needs graphviz's `dot` (apt-get install graphviz): {e}"
                        ))
                    })?;
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .ok_or_else(|| local("dot: no stdin"))?
                    .write_all(g.dot.as_bytes())
                    .map_err(|e| local(format!("dot: {e}")))?;
                let st = child.wait().map_err(|e| local(format!("dot: {e}")))?;
                if !st.success() {
                    return Err(local(format!("dot failed: {st}")));
                }
                eprintln!("wrote {}", file.display());
                return Ok(());
            }
            match out {
                Output::Table => {
                    print!("{}", g.dot);
                    Ok(())
                }
                _ => print(out, &g, Vec::new),
            }
        }
        // The Admin kinds went to `kinds::get`.
        _ => Err(local(format!(
            "get {kind:?}: not a kind of the Mesh service"
        ))),
    }
}
