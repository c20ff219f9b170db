//! Plugins in the settings: `--plugin NAME=TARGET`, `--plugin-config NAME.KEY=VALUE`
//! and the config file's `plugins:` map, merged into one map by plugin name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `plugins: {NAME: {target: ..., config: {...}}}` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePlugin {
    target: Option<String>,
    #[serde(default)]
    config: serde_json::Map<String, serde_json::Value>,
}

/// Where a plugin runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginTarget {
    /// An executable the node starts and supervises.
    Process(PathBuf),
    /// A WebAssembly component run in the node's sandbox.
    Wasm(PathBuf),
    /// A plugin already serving on a unix socket.
    Unix(PathBuf),
    /// A plugin already serving on TCP, `tls` for `grpcs://`.
    Grpc { addr: String, tls: bool },
}

impl std::fmt::Display for PluginTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginTarget::Process(p) | PluginTarget::Wasm(p) => write!(f, "{}", p.display()),
            PluginTarget::Unix(p) => write!(f, "unix://{}", p.display()),
            PluginTarget::Grpc { addr, tls: false } => write!(f, "grpc://{addr}"),
            PluginTarget::Grpc { addr, tls: true } => write!(f, "grpcs://{addr}"),
        }
    }
}

/// Written as the config file takes it: `/path`, `x.wasm`, `unix://...`, `grpc://...`.
impl Serialize for PluginTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl PluginTarget {
    pub fn parse(s: &str) -> Result<PluginTarget, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the target is empty".into());
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err("unix:// needs an absolute socket path (unix:///run/p.sock)".into());
            }
            return Ok(PluginTarget::Unix(PathBuf::from(path)));
        }
        for (scheme, tls) in [("grpc://", false), ("grpcs://", true)] {
            if let Some(addr) = s.strip_prefix(scheme) {
                super::values::host_port(addr)?;
                return Ok(PluginTarget::Grpc {
                    addr: addr.to_string(),
                    tls,
                });
            }
        }
        if s.contains("://") {
            return Err("unknown scheme; use a path, unix://, grpc:// or grpcs://".into());
        }
        if s.ends_with(".wasm") {
            return Ok(PluginTarget::Wasm(PathBuf::from(s)));
        }
        Ok(PluginTarget::Process(PathBuf::from(s)))
    }
}

/// One configured plugin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginSettings {
    pub target: PluginTarget,
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// Plugin names: what `--plugin-config NAME.KEY` and the logs use.
fn validate_plugin_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("a plugin name must be 1-63 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err("a plugin name may use a-z, 0-9, '-' and '_'");
    }
    Ok(())
}

pub(super) fn layer(
    file: Option<BTreeMap<String, FilePlugin>>,
    flags: &[String],
    settings: &[String],
) -> Result<BTreeMap<String, PluginSettings>, ConfigError> {
    let mut targets = BTreeMap::new();
    let mut configs: BTreeMap<String, serde_json::Map<_, _>> = Default::default();
    for (name, p) in file.unwrap_or_default() {
        validate_plugin_name(&name).map_err(|e| invalid("plugins", &name, e))?;
        if let Some(t) = p.target {
            let target = PluginTarget::parse(&t)
                .map_err(|e| invalid("plugins", format!("{name}.target={t}"), e))?;
            targets.insert(name.clone(), target);
        }
        configs.insert(name, p.config);
    }
    for f in flags {
        let (name, target) = f
            .split_once('=')
            .ok_or_else(|| invalid("plugin", f, "must be NAME=TARGET"))?;
        validate_plugin_name(name).map_err(|e| invalid("plugin", f, e))?;
        let target = PluginTarget::parse(target).map_err(|e| invalid("plugin", f, e))?;
        targets.insert(name.to_string(), target);
    }
    for s in settings {
        let (path, value) = s
            .split_once('=')
            .ok_or_else(|| invalid("plugin-config", s, "must be NAME.KEY=VALUE"))?;
        let (name, key) = path
            .split_once('.')
            .filter(|(n, k)| !n.is_empty() && !k.is_empty())
            .ok_or_else(|| invalid("plugin-config", s, "must be NAME.KEY=VALUE"))?;
        configs.entry(name.to_string()).or_default().insert(
            key.to_string(),
            serde_json::Value::String(value.to_string()),
        );
    }
    let mut out = BTreeMap::new();
    for name in configs.keys() {
        if !targets.contains_key(name) {
            return Err(invalid(
                "plugin-config",
                name,
                format!("no plugin {name:?} is configured (add --plugin {name}=TARGET)"),
            ));
        }
    }
    for (name, target) in targets {
        let config = configs.remove(&name).unwrap_or_default();
        out.insert(name, PluginSettings { target, config });
    }
    Ok(out)
}
