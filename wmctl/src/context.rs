//! Where to connect and as whom: contexts from `~/.wmctl/config.yaml` under the flags,
//! the connection, and how failures become exit codes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic::transport::Channel;
use webmesh_api::v1::admin_client::AdminClient;
use webmesh_client::tls::{Dialer, TlsSettings};

use crate::cli::Cli;

/// Where a node serves its admin socket unless told otherwise (`--admin-socket`).
pub const DEFAULT_SOCKET: &str = "/run/webmesh/webmesh.sock";

/// A failure and the exit code that says what kind.
#[derive(Debug)]
pub struct Fail(pub u8, pub String);

pub fn local(msg: impl Into<String>) -> Fail {
    Fail(1, msg.into())
}

pub fn rpc(s: tonic::Status) -> Fail {
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
pub struct Context {
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
pub struct ContextFile {
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

pub fn expand(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// The context the flags select, with the flags applied over it.
pub fn settings(cli: &Cli) -> Result<Context, Fail> {
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

pub struct Conn {
    pub channel: Channel,
    headers: tonic::metadata::MetadataMap,
    timeout: Duration,
}

impl Conn {
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        *r.metadata_mut() = self.headers.clone();
        r.set_timeout(self.timeout);
        r
    }
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }
}

pub async fn connect(cli: &Cli, ctx: &Context) -> Result<Conn, Fail> {
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
    let dialer = Dialer::for_joining(&tls).map_err(local)?;
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
