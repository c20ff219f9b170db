//! Node settings, layered: config file < environment (`WEBMESH_*`) < flags.
//!
//! Every setting is declared once, as one row of the table in `settings.rs`: its key
//! (the long flag, the config file key and, upper-cased, `WEBMESH_<KEY>`), type,
//! default, parser and help. The command line, the environment, the file, the defaults
//! and `--print-config` all come from that row, so adding a setting is one edit.
//!
//! Pure: reading the file is the only IO. Every error names the key and the bad value
//! on one line, so an operator can fix it without reading code.

mod plugins;
mod settings;
mod tls;
pub mod values;

use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::Value;

pub use plugins::{PluginSettings, PluginTarget};
pub use settings::Config;
pub use tls::TlsSettings;
pub use values::{AppDaemonListen, DefaultPolicy};

/// A bad setting: which key, which value, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn invalid(key: &'static str, value: impl ToString, reason: impl ToString) -> ConfigError {
    let value = value.to_string();
    ConfigError::Invalid {
        key,
        // A camp:// URL carries its campfire's key: not in an error (or a log).
        value: if value.starts_with("camp://") {
            crate::campfire::redact(&value)
        } else {
            value
        },
        reason: reason.to_string(),
    }
}

/// How a row takes its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One value (`--key VALUE`); a scalar in the file.
    One,
    /// A boolean: `--key`, `--key=false`; `true`/`false` in the file.
    Switch,
    /// A list: repeatable, comma-separated (`--key a,b --key c`); a list in the file.
    Many,
}

/// One setting as the command line sees it.
pub(crate) struct Row {
    pub key: &'static str,
    pub value_name: &'static str,
    pub help: &'static [&'static str],
    pub kind: Kind,
    /// Left out of `--print-config` when unset (the tests check the others print).
    #[cfg(test)]
    pub omit_empty: bool,
}

impl Row {
    fn env(&self) -> &'static str {
        // Built once per process, when the command is made.
        Box::leak(format!("WEBMESH_{}", self.key.to_uppercase().replace('-', "_")).into_boxed_str())
    }

    fn arg(&self) -> Arg {
        let help = self
            .help
            .iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ");
        let arg = Arg::new(self.key)
            .long(self.key)
            .env(self.env())
            .value_name(self.value_name)
            .help(help);
        match self.kind {
            Kind::One => arg.action(ArgAction::Set),
            Kind::Switch => arg
                .action(ArgAction::Set)
                .num_args(0..=1)
                .default_missing_value("true")
                .value_name("BOOL"),
            Kind::Many => arg.action(ArgAction::Append).value_delimiter(','),
        }
    }
}

/// The command line of `webmesh`: every row, plus the flags that are not settings.
pub fn command() -> Command {
    let mut cmd = Command::new("webmesh")
        .version(crate::version::LONG)
        .about("A zero-configuration WireGuard mesh node.")
        .arg(
            Arg::new("config")
                .long("config")
                .env("WEBMESH_CONFIG")
                .value_name("FILE")
                .help(
                    "YAML or JSON config file; its keys are the long flag names (e.g. `node-id`).",
                ),
        );
    for row in settings::ROWS {
        cmd = cmd.arg(row.arg());
    }
    cmd.arg(
        Arg::new("plugin")
            .long("plugin")
            .env("WEBMESH_PLUGIN")
            .value_name("NAME=TARGET")
            .action(ArgAction::Append)
            .value_delimiter(',')
            .help(
                "A plugin, NAME=TARGET (repeatable). TARGET: an executable (started and \
                 supervised by the node), a `.wasm` component, `unix:///path.sock`, or \
                 `grpc://host:port` / `grpcs://host:port` (a plugin already running).",
            ),
    )
    .arg(
        Arg::new("plugin-config")
            .long("plugin-config")
            .value_name("NAME.KEY=VALUE")
            .action(ArgAction::Append)
            .help(
                "A plugin setting, NAME.KEY=VALUE (repeatable); reaches the plugin's `Configure`.",
            ),
    )
    .arg(
        Arg::new("print-config")
            .long("print-config")
            .action(ArgAction::SetTrue)
            .help("Print the effective configuration as YAML and exit."),
    )
}

/// Where the values of a run come from: the command line (with the environment, which
/// clap reads for each row) over the config file.
pub(crate) struct Sources<'a> {
    matches: Option<&'a ArgMatches>,
    file: serde_json::Map<String, Value>,
    path: PathBuf,
}

/// The raw text of one setting and whether it came from the file.
pub(crate) struct Raw {
    values: Vec<String>,
    from_file: bool,
}

impl Sources<'_> {
    /// The values given for `key`: flags or environment first, else the file.
    fn raw(&self, key: &'static str, kind: Kind) -> Result<Option<Raw>, ConfigError> {
        if let Some(m) = self.matches
            && m.value_source(key).is_some()
            && let Some(v) = m.get_many::<String>(key)
        {
            return Ok(Some(Raw {
                values: v.cloned().collect(),
                from_file: false,
            }));
        }
        let Some(v) = self.file.get(key) else {
            return Ok(None);
        };
        let scalar = |v: &Value| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(self.file_error(key, &other.to_string(), "must be a single value")),
        };
        let values = match (v, kind) {
            (Value::Null, _) => return Ok(None),
            (Value::Array(items), Kind::Many) => {
                items.iter().map(scalar).collect::<Result<_, _>>()?
            }
            (v, _) => vec![scalar(v)?],
        };
        Ok(Some(Raw {
            values,
            from_file: true,
        }))
    }

    fn file_error(&self, key: &str, value: &str, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError::File {
            path: self.path.clone(),
            reason: format!("invalid {key} {value:?}: {reason}"),
        }
    }

    fn error(&self, key: &'static str, raw: &Raw, value: &str, reason: String) -> ConfigError {
        if raw.from_file {
            self.file_error(key, value, reason)
        } else {
            invalid(key, value, reason)
        }
    }

    /// The last value of a single-valued row (flags cannot repeat one; clap refuses).
    pub(crate) fn one<T>(
        &self,
        key: &'static str,
        raw: Raw,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let v = raw.values.last().cloned().unwrap_or_default();
        parse(&v).map_err(|why| self.error(key, &raw, &v, why))
    }

    pub(crate) fn opt<T>(
        &self,
        key: &'static str,
        raw: Raw,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        self.one(key, raw, parse).map(Some)
    }

    pub(crate) fn switch(
        &self,
        key: &'static str,
        raw: Raw,
        parse: impl Fn(&str) -> Result<bool, String>,
    ) -> Result<bool, ConfigError> {
        self.one(key, raw, parse)
    }

    /// Every value of a list row, each parsed; an error names the bad item.
    pub(crate) fn many<T>(
        &self,
        key: &'static str,
        raw: Raw,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        raw.values
            .iter()
            .map(|v| parse(v).map_err(|why| self.error(key, &raw, v, why)))
            .collect()
    }
}

impl Config {
    /// The settings of a command line (flags and environment, already parsed by
    /// [`command`]) over the config file it names, over the defaults.
    pub fn from_matches(m: &ArgMatches) -> Result<Config, ConfigError> {
        let (file, path) = match m.get_one::<String>("config") {
            Some(p) => {
                let path = PathBuf::from(p);
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                (parse_file(&text, &path)?, path)
            }
            None => (Default::default(), PathBuf::new()),
        };
        let strings = |id: &str| -> Vec<String> {
            m.get_many::<String>(id)
                .map(|v| v.cloned().collect())
                .unwrap_or_default()
        };
        Self::build(
            Sources {
                matches: Some(m),
                file,
                path,
            },
            &strings("plugin"),
            &strings("plugin-config"),
        )
    }

    /// Parses a config file's text (YAML, of which JSON is a subset) over the defaults.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = parse_file(text, path)?;
        Self::build(
            Sources {
                matches: None,
                file,
                path: path.to_path_buf(),
            },
            &[],
            &[],
        )
    }

    fn build(
        mut src: Sources,
        plugin_flags: &[String],
        plugin_settings: &[String],
    ) -> Result<Config, ConfigError> {
        let file_plugins = match src.file.remove("plugins") {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v).map_err(|e| ConfigError::File {
                path: src.path.clone(),
                reason: format!("plugins: {e}"),
            })?),
        };
        let known: Vec<&str> = settings::ROWS.iter().map(|r| r.key).collect();
        if let Some(k) = src.file.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ConfigError::File {
                path: src.path.clone(),
                reason: format!(
                    "unknown key {k:?} (the keys are the long flag names; see webmesh --help)"
                ),
            });
        }
        let mut cfg = Config::default();
        cfg.set_rows(&src)?;
        tls::validate(&cfg.tls())?;
        match (&cfg.auth_basic_user, &cfg.auth_basic_password_file) {
            (Some(u), None) => {
                return Err(invalid(
                    "auth-basic-user",
                    u,
                    "needs --auth-basic-password-file",
                ));
            }
            (None, Some(f)) => {
                return Err(invalid(
                    "auth-basic-password-file",
                    f.display(),
                    "needs --auth-basic-user",
                ));
            }
            _ => {}
        }
        cfg.plugins = plugins::layer(file_plugins, plugin_flags, plugin_settings)?;
        cfg.validate_combinations()?;
        Ok(cfg)
    }

    /// These settings with `overrides` (keys as in the config file) laid over them: an
    /// AppDaemon's Connect.
    pub fn with_overrides(
        &self,
        overrides: &serde_json::Map<String, Value>,
    ) -> Result<Config, ConfigError> {
        let path = Path::new("Connect config");
        let mut merged = parse_file(&self.to_yaml(), path)?;
        for (k, v) in overrides {
            merged.insert(k.clone(), v.clone());
        }
        Self::build(
            Sources {
                matches: None,
                file: merged,
                path: path.to_path_buf(),
            },
            &[],
            &[],
        )
    }

    /// A tcp:// AppDaemon needs TLS, an AUTH plugin and the users it admits; CORS
    /// origins need grpc-web; a TURN server, a public address. (Whether a plugin offers
    /// AUTH is known once it runs.)
    fn validate_combinations(&self) -> Result<(), ConfigError> {
        if let Some(l @ values::AppDaemonListen::Tcp(_)) = &self.app_daemon_listen {
            let why = if self.tls_cert.is_none() {
                Some(
                    "tcp:// needs TLS: set --tls-cert and --tls-key (the API's certificate serves it)",
                )
            } else if self.plugins.is_empty() {
                Some("tcp:// needs an AUTH plugin (--plugin NAME=PATH) to authenticate every call")
            } else if self.app_daemon_users.is_empty() {
                Some(
                    "tcp:// needs --app-daemon-users: the identities, as the AUTH plugin names them, that may drive this node",
                )
            } else {
                None
            };
            if let Some(why) = why {
                return Err(invalid("app-daemon-listen", l, why));
            }
        }
        if self.turn_server && self.turn_public_ip.or(self.endpoint).is_none() {
            return Err(invalid(
                "turn-server",
                true,
                "needs --turn-public-ip or --endpoint: the address relayed ports are reached at",
            ));
        }
        if self.campfire_psk.is_some() && !self.turn_server {
            return Err(invalid(
                "campfire-psk",
                "(set)",
                "needs --turn-server: the campfire meets at this node's TURN server",
            ));
        }
        if !self.app_daemon_cors_origin.is_empty() && !self.app_daemon_grpc_web {
            return Err(invalid(
                "app-daemon-cors-origin",
                &self.app_daemon_cors_origin[0],
                "needs --app-daemon-grpc-web",
            ));
        }
        Ok(())
    }

    /// The TLS settings, gathered from the `tls-*` rows.
    pub fn tls(&self) -> TlsSettings {
        TlsSettings {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.tls_client_ca.clone(),
            ca: self.tls_ca.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
            skip_verify: self.tls_skip_verify,
        }
    }

    /// The effective settings as YAML, for `--print-config`: every row in table order,
    /// then the plugins; the file format takes it back.
    pub fn to_yaml(&self) -> String {
        let mut map = serde_norway::Mapping::new();
        self.rows_yaml(&mut map);
        if let Ok(p) = serde_norway::to_value(&self.plugins) {
            map.insert("plugins".into(), p);
        }
        serde_norway::to_string(&map).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// One row's value for `--print-config`; `omit_empty` rows leave out nothing-values.
fn put_yaml<T: serde::Serialize>(
    out: &mut serde_norway::Mapping,
    key: &str,
    value: &T,
    omit_empty: bool,
) {
    let Ok(v) = serde_norway::to_value(value) else {
        return;
    };
    let empty = match &v {
        serde_norway::Value::Null => true,
        serde_norway::Value::Sequence(s) => s.is_empty(),
        _ => false,
    };
    if !(omit_empty && empty) {
        out.insert(key.into(), v);
    }
}

fn parse_file(text: &str, path: &Path) -> Result<serde_json::Map<String, Value>, ConfigError> {
    let err = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason: reason.replace('\n', " "),
    };
    if text.trim().is_empty() {
        return Ok(Default::default());
    }
    match serde_norway::from_str::<Value>(text).map_err(|e| err(e.to_string()))? {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Default::default()),
        _ => Err(err("must be a mapping of setting names to values".into())),
    }
}

#[cfg(test)]
mod tests;
