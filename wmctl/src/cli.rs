//! The command line: flags, subcommands and what `put` takes from flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const AFTER_HELP: &str = "\
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

#[derive(Parser)]
#[command(name = "wmctl", version = webmesh_client::version::LONG, about = "Command-line client of a Webmesh mesh.", after_help = AFTER_HELP)]
pub struct Cli {
    /// gRPC address of a mesh node, or `unix:///PATH` of a node's admin socket
    /// [default: the context's, else the local node's admin socket
    /// unix:///run/webmesh/webmesh.sock if there is one, else 127.0.0.1:8443].
    #[arg(long, short = 's', env = "WMCTL_SERVER", global = true)]
    pub server: Option<String>,
    /// Context of the config file to use [default: its current-context].
    #[arg(long, env = "WMCTL_CONTEXT", global = true)]
    pub context: Option<String>,
    /// The contexts file.
    #[arg(long, env = "WMCTL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Per-call timeout in seconds.
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
    /// A request header for the node's AUTH plugin, KEY=VALUE (repeatable), e.g.
    /// `authorization=Bearer TOKEN`.
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE", global = true)]
    pub headers: Vec<String>,
    /// Have the leader answer reads (x-webmesh-prefer-leader).
    #[arg(long, global = true)]
    pub prefer_leader: bool,
    /// CA bundle to verify the server with (turns TLS on).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mTLS.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_client_cert: Option<PathBuf>,
    /// Key of --tls-client-cert.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_client_key: Option<PathBuf>,
    /// TLS without verifying the server (labs).
    #[arg(long, global = true)]
    pub tls_skip_verify: bool,
    /// User name for the auth-basic plugin.
    #[arg(long, global = true)]
    pub basic_user: Option<String>,
    /// File holding the password of --basic-user.
    #[arg(long, global = true, value_name = "FILE")]
    pub basic_password_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Kind {
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
pub enum GetKind {
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
pub enum Cmd {
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
pub struct PutArgs {
    /// YAML or JSON file ('-' for stdin).
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    /// roles: resources (votes, roles, rolebindings, groups, networkacls, routes,
    /// datachannels, edges, all).
    #[arg(long = "resource", value_delimiter = ',')]
    pub resources: Vec<String>,
    /// roles: verbs (put, delete, all).
    #[arg(long = "verb", value_delimiter = ',')]
    pub verbs: Vec<String>,
    /// roles: resource names the rule is limited to.
    #[arg(long = "resource-name", value_delimiter = ',')]
    pub resource_names: Vec<String>,
    /// rolebindings: the role.
    #[arg(long)]
    pub role: Option<String>,
    /// rolebindings, groups: node subjects ('*' for all nodes); routes: the node.
    #[arg(long = "node", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// rolebindings, groups: user subjects.
    #[arg(long = "user", value_delimiter = ',')]
    pub users: Vec<String>,
    /// rolebindings, groups: group subjects.
    #[arg(long = "group", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// rolebindings, groups: every subject (SUBJECT_ALL "*").
    #[arg(long)]
    pub everyone: bool,
    /// networkacls: priority (higher first).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// networkacls: accept or deny.
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long = "source-node", value_delimiter = ',')]
    pub source_nodes: Vec<String>,
    #[arg(long = "destination-node", value_delimiter = ',')]
    pub destination_nodes: Vec<String>,
    #[arg(long = "source-cidr", value_delimiter = ',')]
    pub source_cidrs: Vec<String>,
    #[arg(long = "destination-cidr", value_delimiter = ',')]
    pub destination_cidrs: Vec<String>,
    /// networkacls: tcp, udp, icmp, icmpv6.
    #[arg(long = "protocol", value_delimiter = ',')]
    pub protocols: Vec<String>,
    #[arg(long = "port", value_delimiter = ',')]
    pub ports: Vec<u32>,
    /// routes: CIDRs routed through the node.
    #[arg(long = "cidr", value_delimiter = ',')]
    pub cidrs: Vec<String>,
    /// routes: the node traffic goes through first.
    #[arg(long)]
    pub next_hop: Option<String>,
    /// edges: one end.
    #[arg(long)]
    pub source: Option<String>,
    /// edges: the other end.
    #[arg(long)]
    pub target: Option<String>,
    /// edges: weight (lower is preferred).
    #[arg(long)]
    pub weight: Option<i32>,
    /// edges: an attribute KEY=VALUE (repeatable).
    #[arg(long = "attribute")]
    pub attributes: Vec<String>,
}
