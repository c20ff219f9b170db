//! `wmctl`: the command-line client of a Webmesh mesh.
//!
//! Exit codes (for scripts): 0 success; 1 a local problem (bad file, bad context);
//! 2 bad command line; 3 the server could not be reached or is unavailable; 4 not
//! found; 5 not authenticated or not permitted; 6 the request was refused as invalid
//! or in the wrong state; 7 any other server error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic::transport::Channel;
use webmesh::config::TlsSettings;
use webmesh::mesh::rbac::resource_name;
use webmesh_api::v1::admin_client::AdminClient;
use webmesh_api::v1::mesh_client::MeshClient;
use webmesh_api::v1::node_client::NodeClient;
use webmesh_api::v1::{
    AclAction, ClusterStatus, Feature, GetNodeRequest, GetStatusRequest, Group, MeshEdge,
    NetworkAcl, Role, RoleBinding, Route, Rule, RuleResource, RuleVerb, SnapshotRequest, Subject,
    SubjectType,
};

const AFTER_HELP: &str = "\
Contexts: ~/.wmctl/config.yaml (or --config) holds named contexts, e.g.
  current-context: lab
  contexts:
    lab:
      server: 10.0.0.1:8443
      tls-ca: /etc/webmesh/ca.pem          # also tls-client-cert, tls-client-key, tls-skip-verify
      basic-user: admin                   # with basic-password-file
      basic-password-file: ~/.wmctl/admin.pass
      prefer-leader: true
      headers: {authorization: Bearer TOKEN}
Flags override the context.

Exit codes: 0 ok, 1 local error, 2 usage, 3 unreachable/unavailable, 4 not found,
5 unauthenticated/permission denied, 6 invalid argument/failed precondition, 7 other.";

/// Where a node serves its admin socket unless told otherwise (`--admin-socket`).
const DEFAULT_SOCKET: &str = "/run/webmesh/webmesh.sock";

#[derive(Parser)]
#[command(name = "wmctl", version = webmesh::version::LONG, about = "Command-line client of a Webmesh mesh.", after_help = AFTER_HELP)]
struct Cli {
    /// gRPC address of a mesh node, or `unix:///PATH` of a node's admin socket
    /// [default: the context's, else the local node's admin socket
    /// unix:///run/webmesh/webmesh.sock if there is one, else 127.0.0.1:8443].
    #[arg(long, short = 's', env = "WMCTL_SERVER", global = true)]
    server: Option<String>,
    /// Context of the config file to use [default: its current-context].
    #[arg(long, env = "WMCTL_CONTEXT", global = true)]
    context: Option<String>,
    /// The contexts file.
    #[arg(long, env = "WMCTL_CONFIG", global = true)]
    config: Option<PathBuf>,
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
    /// Have the leader answer reads (x-webmesh-prefer-leader).
    #[arg(long, global = true)]
    prefer_leader: bool,
    /// CA bundle to verify the server with (turns TLS on).
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate for mTLS.
    #[arg(long, global = true, value_name = "FILE")]
    tls_client_cert: Option<PathBuf>,
    /// Key of --tls-client-cert.
    #[arg(long, global = true, value_name = "FILE")]
    tls_client_key: Option<PathBuf>,
    /// TLS without verifying the server (labs).
    #[arg(long, global = true)]
    tls_skip_verify: bool,
    /// User name for the auth-basic plugin.
    #[arg(long, global = true)]
    basic_user: Option<String>,
    /// File holding the password of --basic-user.
    #[arg(long, global = true, value_name = "FILE")]
    basic_password_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Kind {
    #[value(alias = "role")]
    Roles,
    #[value(alias = "rolebinding")]
    Rolebindings,
    #[value(alias = "group")]
    Groups,
    #[value(alias = "networkacl", alias = "acl", alias = "acls")]
    Networkacls,
    #[value(alias = "route")]
    Routes,
    #[value(alias = "edge")]
    Edges,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum GetKind {
    #[value(alias = "role")]
    Roles,
    #[value(alias = "rolebinding")]
    Rolebindings,
    #[value(alias = "group")]
    Groups,
    #[value(alias = "networkacl", alias = "acl", alias = "acls")]
    Networkacls,
    #[value(alias = "route")]
    Routes,
    #[value(alias = "edge")]
    Edges,
    #[value(alias = "node")]
    Nodes,
    Graph,
}

#[derive(Subcommand)]
enum Cmd {
    /// Status of a node (the one at --server, or NODE through it).
    Status {
        /// Node ID; empty for the node at --server.
        node: Option<String>,
    },
    /// Show objects: all of a kind, or one by NAME (edges: SOURCE/TARGET).
    Get {
        kind: GetKind,
        name: Option<String>,
        /// With `get graph`: render to this SVG file with graphviz's `dot`.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Create or replace objects, from a YAML/JSON file (one object or {items: [...]})
    /// or from flags.
    Put {
        kind: Kind,
        #[command(flatten)]
        args: Box<PutArgs>,
    },
    /// Delete an object by NAME (edges: SOURCE/TARGET).
    Delete { kind: Kind, name: String },
    /// Save a snapshot of the mesh state.
    Snapshot {
        /// Where to write it.
        #[arg(long = "out", short = 'f', value_name = "FILE")]
        out: PathBuf,
    },
    /// Make nodes Raft voters (Node.Update with as_voter; takes every right on them,
    /// e.g. the bootstrap node's admin socket).
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the mesh (Node.Leave on their behalf; takes every right on
    /// them).
    Remove {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Args, Default)]
struct PutArgs {
    /// YAML or JSON file ('-' for stdin).
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    /// roles: resources (votes, roles, rolebindings, groups, networkacls, routes,
    /// datachannels, edges, all).
    #[arg(long = "resource", value_delimiter = ',')]
    resources: Vec<String>,
    /// roles: verbs (put, delete, all).
    #[arg(long = "verb", value_delimiter = ',')]
    verbs: Vec<String>,
    /// roles: resource names the rule is limited to.
    #[arg(long = "resource-name", value_delimiter = ',')]
    resource_names: Vec<String>,
    /// rolebindings: the role.
    #[arg(long)]
    role: Option<String>,
    /// rolebindings, groups: node subjects ('*' for all nodes); routes: the node.
    #[arg(long = "node", value_delimiter = ',')]
    nodes: Vec<String>,
    /// rolebindings, groups: user subjects.
    #[arg(long = "user", value_delimiter = ',')]
    users: Vec<String>,
    /// rolebindings, groups: group subjects.
    #[arg(long = "group", value_delimiter = ',')]
    groups: Vec<String>,
    /// rolebindings, groups: every subject (SUBJECT_ALL "*").
    #[arg(long)]
    everyone: bool,
    /// networkacls: priority (higher first).
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// networkacls: accept or deny.
    #[arg(long)]
    action: Option<String>,
    #[arg(long = "source-node", value_delimiter = ',')]
    source_nodes: Vec<String>,
    #[arg(long = "destination-node", value_delimiter = ',')]
    destination_nodes: Vec<String>,
    #[arg(long = "source-cidr", value_delimiter = ',')]
    source_cidrs: Vec<String>,
    #[arg(long = "destination-cidr", value_delimiter = ',')]
    destination_cidrs: Vec<String>,
    /// networkacls: tcp, udp, icmp, icmpv6.
    #[arg(long = "protocol", value_delimiter = ',')]
    protocols: Vec<String>,
    #[arg(long = "port", value_delimiter = ',')]
    ports: Vec<u32>,
    /// routes: CIDRs routed through the node.
    #[arg(long = "cidr", value_delimiter = ',')]
    cidrs: Vec<String>,
    /// routes: the node traffic goes through first.
    #[arg(long)]
    next_hop: Option<String>,
    /// edges: one end.
    #[arg(long)]
    source: Option<String>,
    /// edges: the other end.
    #[arg(long)]
    target: Option<String>,
    /// edges: weight (lower is preferred).
    #[arg(long)]
    weight: Option<i32>,
    /// edges: an attribute KEY=VALUE (repeatable).
    #[arg(long = "attribute")]
    attributes: Vec<String>,
}

/// A failure and the exit code that says what kind.
struct Fail(u8, String);

fn local(msg: impl Into<String>) -> Fail {
    Fail(1, msg.into())
}

fn rpc(s: tonic::Status) -> Fail {
    let code = match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => 3,
        Code::NotFound => 4,
        Code::Unauthenticated | Code::PermissionDenied => 5,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::OutOfRange => 6,
        _ => 7,
    };
    Fail(code, format!("{:?}: {}", s.code(), s.message()))
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Context {
    server: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
    #[serde(default)]
    tls_skip_verify: bool,
    basic_user: Option<String>,
    basic_password_file: Option<PathBuf>,
    #[serde(default)]
    prefer_leader: bool,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ContextFile {
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

fn expand(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// The context the flags select, with the flags applied over it.
fn settings(cli: &Cli) -> Result<Context, Fail> {
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".wmctl/config.yaml")));
    let file: ContextFile = match &path {
        Some(p) if p.exists() => {
            let text =
                std::fs::read_to_string(p).map_err(|e| local(format!("{}: {e}", p.display())))?;
            serde_norway::from_str(&text).map_err(|e| local(format!("{}: {e}", p.display())))?
        }
        Some(p) if cli.config.is_some() => {
            return Err(local(format!("--config {}: no such file", p.display())));
        }
        _ => ContextFile::default(),
    };
    let name = cli.context.clone().or(file.current_context.clone());
    let mut ctx = match &name {
        Some(n) => file.contexts.get(n).cloned().ok_or_else(|| {
            local(format!(
                "no context {n:?} in {} (contexts: {})",
                path.as_deref().unwrap_or(Path::new("?")).display(),
                file.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?,
        None => Context::default(),
    };
    if let Some(s) = &cli.server {
        ctx.server = Some(s.clone());
    }
    macro_rules! over {
        ($($f:ident),*) => {$(if cli.$f.is_some() { ctx.$f = cli.$f.clone(); })*};
    }
    over!(
        tls_ca,
        tls_client_cert,
        tls_client_key,
        basic_user,
        basic_password_file
    );
    ctx.tls_skip_verify |= cli.tls_skip_verify;
    ctx.prefer_leader |= cli.prefer_leader;
    for h in &cli.headers {
        let (k, v) = h
            .split_once('=')
            .ok_or_else(|| Fail(2, format!("bad --header {h:?}: must be KEY=VALUE")))?;
        ctx.headers
            .insert(k.trim().to_ascii_lowercase(), v.to_string());
    }
    if let Some(u) = &ctx.basic_user {
        let f = ctx
            .basic_password_file
            .as_ref()
            .ok_or_else(|| local("basic-user needs basic-password-file"))?;
        let pw = std::fs::read_to_string(expand(f))
            .map_err(|e| local(format!("basic-password-file {}: {e}", f.display())))?;
        ctx.headers
            .insert("x-webmesh-basic-auth-username".into(), u.clone());
        ctx.headers.insert(
            "x-webmesh-basic-auth-password".into(),
            pw.trim_end_matches(['\r', '\n']).to_string(),
        );
    }
    if ctx.prefer_leader {
        ctx.headers
            .insert("x-webmesh-prefer-leader".into(), "true".into());
    }
    Ok(ctx)
}

struct Conn {
    channel: Channel,
    headers: tonic::metadata::MetadataMap,
    timeout: Duration,
}

impl Conn {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        *r.metadata_mut() = self.headers.clone();
        r.set_timeout(self.timeout);
        r
    }
    fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }
}

async fn connect(cli: &Cli, ctx: &Context) -> Result<Conn, Fail> {
    let server = ctx.server.clone().unwrap_or_else(|| {
        // On a node's host, its admin socket; else the API on loopback.
        if std::path::Path::new(DEFAULT_SOCKET).exists() {
            format!("unix://{DEFAULT_SOCKET}")
        } else {
            "127.0.0.1:8443".into()
        }
    });
    let tls = TlsSettings {
        ca: ctx.tls_ca.as_deref().map(expand),
        client_cert: ctx.tls_client_cert.as_deref().map(expand),
        client_key: ctx.tls_client_key.as_deref().map(expand),
        skip_verify: ctx.tls_skip_verify,
        ..Default::default()
    };
    let dialer = webmesh::tls::Dialer::for_joining(&tls).map_err(local)?;
    let timeout = Duration::from_secs(cli.timeout);
    let channel = dialer
        .channel(&server, Some(timeout))
        .map_err(|e| Fail(2, format!("bad server {server:?}: {e}")))?;
    let mut headers = tonic::metadata::MetadataMap::new();
    for (k, v) in &ctx.headers {
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
            .map_err(|_| Fail(2, format!("bad header {k:?}: not a header name")))?;
        let value = v.parse().map_err(|_| {
            Fail(
                2,
                format!("bad header {k:?}: the value must be printable ASCII"),
            )
        })?;
        headers.insert(key, value);
    }
    Ok(Conn {
        channel,
        headers,
        timeout,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("wmctl: {msg}");
            ExitCode::from(code)
        }
    }
}

fn print<T: Serialize>(
    out: Output,
    v: &T,
    table: impl FnOnce() -> Vec<Vec<String>>,
) -> Result<(), Fail> {
    match out {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(v).map_err(|e| local(e.to_string()))?
        ),
        Output::Yaml => print!(
            "{}",
            serde_norway::to_string(v).map_err(|e| local(e.to_string()))?
        ),
        Output::Table => {
            let rows = table();
            let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
            let widths: Vec<usize> = (0..cols)
                .map(|c| {
                    rows.iter()
                        .filter_map(|r| r.get(c))
                        .map(String::len)
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for r in rows {
                let line: Vec<String> = r
                    .iter()
                    .enumerate()
                    .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
                    .collect();
                println!("{}", line.join("  ").trim_end());
            }
        }
    }
    Ok(())
}

fn subjects_text(s: &[Subject]) -> String {
    s.iter()
        .map(|s| {
            let ty = match SubjectType::try_from(s.r#type) {
                Ok(SubjectType::SubjectNode) => "node",
                Ok(SubjectType::SubjectUser) => "user",
                Ok(SubjectType::SubjectGroup) => "group",
                Ok(SubjectType::SubjectAll) => "all",
                _ => "?",
            };
            format!("{ty}:{}", s.name)
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn list_or_star(v: &[String]) -> String {
    if v.is_empty() {
        "*".into()
    } else {
        v.join(",")
    }
}

fn verb_text(v: i32) -> &'static str {
    match RuleVerb::try_from(v) {
        Ok(RuleVerb::VerbPut) => "put",
        Ok(RuleVerb::VerbDelete) => "delete",
        Ok(RuleVerb::VerbAll) => "all",
        _ => "?",
    }
}

fn rules_text(rules: &[Rule]) -> String {
    rules
        .iter()
        .map(|r| {
            let res: Vec<&str> = r
                .resources
                .iter()
                .map(|x| {
                    resource_name(
                        RuleResource::try_from(*x).unwrap_or(RuleResource::ResourceUnknown),
                    )
                })
                .collect();
            let verbs: Vec<&str> = r.verbs.iter().map(|v| verb_text(*v)).collect();
            let mut t = format!("{} {}", verbs.join("/"), res.join(","));
            if !r.resource_names.is_empty() {
                t.push_str(&format!(" [{}]", r.resource_names.join(",")));
            }
            t
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn edge_name(name: &str) -> Result<(String, String), Fail> {
    name.split_once('/')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| Fail(2, format!("edge {name:?}: name edges as SOURCE/TARGET")))
}

async fn run(cli: &Cli) -> Result<(), Fail> {
    if let Cmd::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "wmctl", &mut std::io::stdout());
        return Ok(());
    }
    let ctx = settings(cli)?;
    let conn = connect(cli, &ctx).await?;
    match &cli.command {
        Cmd::Completions { .. } => Ok(()),
        Cmd::Status { node } => status(cli, &conn, node.clone().unwrap_or_default()).await,
        Cmd::Get { kind, name, svg } => {
            get(cli, &conn, *kind, name.as_deref(), svg.as_deref()).await
        }
        Cmd::Put { kind, args } => put(&conn, *kind, args).await,
        Cmd::Delete { kind, name } => delete(&conn, *kind, name).await,
        Cmd::Snapshot { out } => {
            let snap = NodeClient::new(conn.channel.clone())
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
                NodeClient::new(conn.channel.clone())
                    .update(conn.req(webmesh_api::v1::UpdateRequest {
                        id: id.clone(),
                        as_voter: true,
                        ..Default::default()
                    }))
                    .await
                    .map_err(rpc)?;
                eprintln!("{id} is a voter");
            }
            Ok(())
        }
        Cmd::Remove { nodes } => {
            for id in nodes {
                NodeClient::new(conn.channel.clone())
                    .leave(conn.req(webmesh_api::v1::LeaveRequest { id: id.clone() }))
                    .await
                    .map_err(rpc)?;
                eprintln!("{id} removed");
            }
            Ok(())
        }
    }
}

async fn status(cli: &Cli, conn: &Conn, id: String) -> Result<(), Fail> {
    let status = NodeClient::new(conn.channel.clone())
        .get_status(conn.req(GetStatusRequest { id }))
        .await
        .map_err(rpc)?
        .into_inner();
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

async fn get(
    cli: &Cli,
    conn: &Conn,
    kind: GetKind,
    name: Option<&str>,
    svg: Option<&Path>,
) -> Result<(), Fail> {
    let out = cli.output;
    let named = |n: Option<&str>| n.map(str::to_string).unwrap_or_default();
    let mut admin = conn.admin();
    macro_rules! get_or_list {
        ($get:ident, $list:ident, $msg:expr, $table:expr) => {{
            let items = match name {
                Some(_) => vec![admin.$get(conn.req($msg)).await.map_err(rpc)?.into_inner()],
                None => admin.$list(conn.req(())).await.map_err(rpc)?.into_inner().items,
            };
            let table = $table;
            if name.is_some() {
                print(out, &items[0], || table(&items))
            } else {
                print(out, &serde_json::json!({ "items": items }), || table(&items))
            }
        }};
    }
    match kind {
        GetKind::Roles => get_or_list!(
            get_role,
            list_roles,
            Role {
                name: named(name),
                ..Default::default()
            },
            |items: &[Role]| {
                let mut rows = vec![vec!["NAME".to_string(), "RULES".to_string()]];
                rows.extend(
                    items
                        .iter()
                        .map(|r| vec![r.name.clone(), rules_text(&r.rules)]),
                );
                rows
            }
        ),
        GetKind::Rolebindings => get_or_list!(
            get_role_binding,
            list_role_bindings,
            RoleBinding {
                name: named(name),
                ..Default::default()
            },
            |items: &[RoleBinding]| {
                let mut rows = vec![vec!["NAME".into(), "ROLE".into(), "SUBJECTS".into()]];
                rows.extend(
                    items
                        .iter()
                        .map(|b| vec![b.name.clone(), b.role.clone(), subjects_text(&b.subjects)]),
                );
                rows
            }
        ),
        GetKind::Groups => get_or_list!(
            get_group,
            list_groups,
            Group {
                name: named(name),
                ..Default::default()
            },
            |items: &[Group]| {
                let mut rows = vec![vec!["NAME".into(), "SUBJECTS".into()]];
                rows.extend(
                    items
                        .iter()
                        .map(|g| vec![g.name.clone(), subjects_text(&g.subjects)]),
                );
                rows
            }
        ),
        GetKind::Networkacls => get_or_list!(
            get_network_acl,
            list_network_ac_ls,
            NetworkAcl {
                name: named(name),
                ..Default::default()
            },
            |items: &[NetworkAcl]| {
                let mut rows = vec![
                    [
                        "NAME",
                        "PRIORITY",
                        "ACTION",
                        "SOURCES",
                        "DESTINATIONS",
                        "SOURCE CIDRS",
                        "DEST CIDRS",
                        "PROTOCOLS",
                        "PORTS",
                    ]
                    .map(String::from)
                    .to_vec(),
                ];
                rows.extend(items.iter().map(|a| {
                    vec![
                        a.name.clone(),
                        a.priority.to_string(),
                        match AclAction::try_from(a.action) {
                            Ok(AclAction::ActionAccept) => "accept",
                            Ok(AclAction::ActionDeny) => "deny",
                            _ => "?",
                        }
                        .into(),
                        list_or_star(&a.source_nodes),
                        list_or_star(&a.destination_nodes),
                        list_or_star(&a.source_cidrs),
                        list_or_star(&a.destination_cidrs),
                        list_or_star(&a.protocols),
                        if a.ports.is_empty() {
                            "*".into()
                        } else {
                            a.ports
                                .iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        },
                    ]
                }));
                rows
            }
        ),
        GetKind::Routes => get_or_list!(
            get_route,
            list_routes,
            Route {
                name: named(name),
                ..Default::default()
            },
            |items: &[Route]| {
                let mut rows = vec![
                    ["NAME", "NODE", "CIDRS", "NEXT HOP"]
                        .map(String::from)
                        .to_vec(),
                ];
                rows.extend(items.iter().map(|r| {
                    vec![
                        r.name.clone(),
                        r.node.clone(),
                        r.destination_cidrs.join(","),
                        r.next_hop_node.clone(),
                    ]
                }));
                rows
            }
        ),
        GetKind::Edges => {
            let (source, target) = match name {
                Some(n) => edge_name(n)?,
                None => Default::default(),
            };
            get_or_list!(
                get_edge,
                list_edges,
                MeshEdge {
                    source,
                    target,
                    ..Default::default()
                },
                |items: &[MeshEdge]| {
                    let mut rows = vec![
                        ["SOURCE", "TARGET", "WEIGHT", "ATTRIBUTES"]
                            .map(String::from)
                            .to_vec(),
                    ];
                    rows.extend(items.iter().map(|e| {
                        let mut attrs: Vec<String> = e
                            .attributes
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        attrs.sort();
                        vec![
                            e.source.clone(),
                            e.target.clone(),
                            e.weight.to_string(),
                            attrs.join(","),
                        ]
                    }));
                    rows
                }
            )
        }
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
    }
}

/// The objects in a YAML/JSON file: one, or a list under `items`.
fn from_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, Fail> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| local(format!("stdin: {e}")))?
    } else {
        std::fs::read_to_string(path).map_err(|e| local(format!("{}: {e}", path.display())))?
    };
    let value: serde_json::Value =
        serde_norway::from_str(&text).map_err(|e| local(format!("{}: {e}", path.display())))?;
    let values = match value.get("items") {
        Some(serde_json::Value::Array(items)) => items.clone(),
        _ => vec![value],
    };
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v)
                .map_err(|e| local(format!("{}: object {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

fn need<T: Clone>(v: &Option<T>, flag: &str, kind: &str) -> Result<T, Fail> {
    v.clone().ok_or_else(|| {
        Fail(
            2,
            format!("put {kind}: --{flag} is required (or give -f FILE)"),
        )
    })
}

fn subjects_from(a: &PutArgs) -> Vec<Subject> {
    let mut s = Vec::new();
    let mut add = |names: &[String], ty: SubjectType| {
        for n in names {
            s.push(Subject {
                name: n.clone(),
                r#type: ty as i32,
            });
        }
    };
    add(&a.nodes, SubjectType::SubjectNode);
    add(&a.users, SubjectType::SubjectUser);
    add(&a.groups, SubjectType::SubjectGroup);
    if a.everyone {
        add(&["*".to_string()], SubjectType::SubjectAll);
    }
    s
}

fn resource_of(s: &str) -> Result<i32, Fail> {
    let all = [
        RuleResource::ResourceVotes,
        RuleResource::ResourceRoles,
        RuleResource::ResourceRoleBindings,
        RuleResource::ResourceGroups,
        RuleResource::ResourceNetworkAcls,
        RuleResource::ResourceRoutes,
        RuleResource::ResourceDataChannels,
        RuleResource::ResourceEdges,
        RuleResource::ResourceAll,
    ];
    all.iter()
        .find(|r| resource_name(**r) == s)
        .map(|r| *r as i32)
        .ok_or_else(|| {
            Fail(
                2,
                format!(
                    "--resource {s:?}: one of {}",
                    all.map(resource_name).join(", ")
                ),
            )
        })
}

async fn put(conn: &Conn, kind: Kind, a: &PutArgs) -> Result<(), Fail> {
    let mut admin = conn.admin();
    macro_rules! send {
        ($rpc:ident, $items:expr, $what:literal, $name:expr) => {{
            for item in $items {
                let name = $name(&item);
                admin.$rpc(conn.req(item)).await.map_err(rpc)?;
                eprintln!("{} {name} put", $what);
            }
            Ok(())
        }};
    }
    let file = a.file.as_deref();
    match kind {
        Kind::Roles => {
            let items: Vec<Role> = match file {
                Some(f) => from_file(f)?,
                None => vec![Role {
                    name: need(&a.name, "name", "role")?,
                    rules: vec![Rule {
                        resources: a
                            .resources
                            .iter()
                            .map(|r| resource_of(r))
                            .collect::<Result<_, _>>()?,
                        resource_names: a.resource_names.clone(),
                        verbs: a
                            .verbs
                            .iter()
                            .map(|v| match v.as_str() {
                                "put" => Ok(RuleVerb::VerbPut as i32),
                                "delete" => Ok(RuleVerb::VerbDelete as i32),
                                "all" => Ok(RuleVerb::VerbAll as i32),
                                _ => Err(Fail(2, format!("--verb {v:?}: put, delete or all"))),
                            })
                            .collect::<Result<_, _>>()?,
                    }],
                }],
            };
            send!(put_role, items, "role", |r: &Role| r.name.clone())
        }
        Kind::Rolebindings => {
            let items: Vec<RoleBinding> = match file {
                Some(f) => from_file(f)?,
                None => vec![RoleBinding {
                    name: need(&a.name, "name", "rolebinding")?,
                    role: need(&a.role, "role", "rolebinding")?,
                    subjects: subjects_from(a),
                }],
            };
            send!(put_role_binding, items, "rolebinding", |r: &RoleBinding| r
                .name
                .clone())
        }
        Kind::Groups => {
            let items: Vec<Group> = match file {
                Some(f) => from_file(f)?,
                None => vec![Group {
                    name: need(&a.name, "name", "group")?,
                    subjects: subjects_from(a),
                }],
            };
            send!(put_group, items, "group", |g: &Group| g.name.clone())
        }
        Kind::Networkacls => {
            let items: Vec<NetworkAcl> = match file {
                Some(f) => from_file(f)?,
                None => vec![NetworkAcl {
                    name: need(&a.name, "name", "networkacl")?,
                    priority: a.priority.unwrap_or(0),
                    action: match need(&a.action, "action", "networkacl")?.as_str() {
                        "accept" => AclAction::ActionAccept as i32,
                        "deny" => AclAction::ActionDeny as i32,
                        other => {
                            return Err(Fail(2, format!("--action {other:?}: accept or deny")));
                        }
                    },
                    source_nodes: a.source_nodes.clone(),
                    destination_nodes: a.destination_nodes.clone(),
                    source_cidrs: a.source_cidrs.clone(),
                    destination_cidrs: a.destination_cidrs.clone(),
                    protocols: a.protocols.clone(),
                    ports: a.ports.clone(),
                }],
            };
            send!(put_network_acl, items, "networkacl", |n: &NetworkAcl| n
                .name
                .clone())
        }
        Kind::Routes => {
            let items: Vec<Route> = match file {
                Some(f) => from_file(f)?,
                None => vec![Route {
                    name: need(&a.name, "name", "route")?,
                    node: a.nodes.first().cloned().ok_or_else(|| {
                        Fail(2, "put route: --node is required (or give -f FILE)".into())
                    })?,
                    destination_cidrs: a.cidrs.clone(),
                    next_hop_node: a.next_hop.clone().unwrap_or_default(),
                }],
            };
            send!(put_route, items, "route", |r: &Route| r.name.clone())
        }
        Kind::Edges => {
            let items: Vec<MeshEdge> = match file {
                Some(f) => from_file(f)?,
                None => vec![MeshEdge {
                    source: need(&a.source, "source", "edge")?,
                    target: need(&a.target, "target", "edge")?,
                    weight: a.weight.unwrap_or(0),
                    attributes: a
                        .attributes
                        .iter()
                        .map(|kv| {
                            kv.split_once('=')
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .ok_or_else(|| Fail(2, format!("--attribute {kv:?}: KEY=VALUE")))
                        })
                        .collect::<Result<_, _>>()?,
                }],
            };
            send!(put_edge, items, "edge", |e: &MeshEdge| format!(
                "{}/{}",
                e.source, e.target
            ))
        }
    }
}

async fn delete(conn: &Conn, kind: Kind, name: &str) -> Result<(), Fail> {
    let mut admin = conn.admin();
    macro_rules! by_name {
        ($rpc:ident, $t:ident) => {
            admin
                .$rpc(conn.req($t {
                    name: name.to_string(),
                    ..Default::default()
                }))
                .await
        };
    }
    match kind {
        Kind::Roles => by_name!(delete_role, Role),
        Kind::Rolebindings => by_name!(delete_role_binding, RoleBinding),
        Kind::Groups => by_name!(delete_group, Group),
        Kind::Networkacls => by_name!(delete_network_acl, NetworkAcl),
        Kind::Routes => by_name!(delete_route, Route),
        Kind::Edges => {
            let (source, target) = edge_name(name)?;
            admin
                .delete_edge(conn.req(MeshEdge {
                    source,
                    target,
                    ..Default::default()
                }))
                .await
        }
    }
    .map_err(rpc)?;
    eprintln!("{kind:?} {name} deleted");
    Ok(())
}
