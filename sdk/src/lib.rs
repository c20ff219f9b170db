//! `webmesh-plugin-sdk`: write a Webmesh plugin once; run it as a process (gRPC over a
//! unix socket, started by the node) or as a WASM component.
//!
//! A plugin is a type that implements [`Plugin`] and, through the accessors of
//! [`Plugin`], any of the capability traits: [`AuthPlugin`], [`IpamPlugin`],
//! [`StoragePlugin`], [`WatchPlugin`]. The node learns the capabilities from
//! `GetInfo` and routes its duties accordingly.
//!
//! ```no_run
//! use webmesh_plugin_sdk::{async_trait, AuthPlugin, Config, Error, Info, Plugin, v1};
//! use std::sync::RwLock;
//!
//! /// Lets in the callers whose `x-webmesh-id` header names an allowed ID.
//! #[derive(Default)]
//! struct Allowlist {
//!     allowed: RwLock<Vec<String>>,
//! }
//!
//! #[async_trait]
//! impl Plugin for Allowlist {
//!     fn info(&self) -> Info {
//!         Info::new("allowlist", env!("CARGO_PKG_VERSION"), "IDs from a list")
//!     }
//!     async fn configure(&self, config: Config) -> Result<(), Error> {
//!         let ids = config.required_str("ids")?;
//!         *self.allowed.write().unwrap() = ids.split(',').map(str::to_string).collect();
//!         Ok(())
//!     }
//!     fn auth(&self) -> Option<&dyn AuthPlugin> {
//!         Some(self)
//!     }
//! }
//!
//! #[async_trait]
//! impl AuthPlugin for Allowlist {
//!     async fn authenticate(&self, req: v1::AuthenticationRequest) -> Result<String, Error> {
//!         let id = req.headers.get("x-webmesh-id").cloned().unwrap_or_default();
//!         if self.allowed.read().unwrap().contains(&id) {
//!             Ok(id)
//!         } else {
//!             Err(Error::unauthenticated(format!("{id:?} is not on the list")))
//!         }
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     webmesh_plugin_sdk::serve(Allowlist::default())
//! }
//! ```
//!
//! Run by the node (`webmesh --plugin auth=./allowlist --plugin-config auth.ids=a,b`),
//! the plugin finds its socket in `WEBMESH_PLUGIN_SOCKET`, serves there and prints the
//! handshake line. Run by hand (`./allowlist --listen /run/allowlist.sock`), it serves
//! until SIGTERM and the node reaches it with `--plugin auth=unix:///run/allowlist.sock`.
//!
//! Plugins read the mesh state through [`querier()`] (the node answers from its replica).

mod config;
mod error;
#[cfg(not(target_family = "wasm"))]
mod process;
mod snapshot;
#[cfg(target_family = "wasm")]
#[doc(hidden)]
pub mod wasm;

pub use async_trait::async_trait;
pub use config::Config;
pub use error::{Code, Error};
#[cfg(not(target_family = "wasm"))]
pub use process::{Querier, querier, serve, serve_on, serve_tcp};
pub use snapshot::{SnapshotEntry, decode_snapshot};
#[cfg(target_family = "wasm")]
pub use wasm::{Querier, log, querier};
pub use webmesh_api::v1;

/// The first line a process plugin prints on stdout: protocol version 1, then how to
/// reach it.
pub const HANDSHAKE_PREFIX: &str = "webmesh-plugin|1|unix|";

/// The environment variable through which the node hands a process plugin its socket.
pub const SOCKET_ENV: &str = "WEBMESH_PLUGIN_SOCKET";

/// The environment variable through which the node hands a process plugin its private
/// directory (`<data-dir>/plugins/<name>`, mode 0700): where it keeps files by default.
pub const DATA_DIR_ENV: &str = "WEBMESH_PLUGIN_DATA_DIR";

/// The private directory the node gave this plugin, if it was started by a node.
pub fn data_dir() -> Option<std::path::PathBuf> {
    std::env::var_os(DATA_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
}

/// One setting of a plugin, for `--help`: its key, its default (empty: none) and what
/// it does.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Exports a plugin from a library crate built for `wasm32-wasip2`: the same value a
/// process plugin passes to [`serve`]. Expands to nothing on other targets, so the one
/// library serves both.
///
/// ```ignore
/// webmesh_plugin_sdk::wasm_plugin!(Allowlist::default());
/// ```
#[macro_export]
macro_rules! wasm_plugin {
    ($make:expr) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            #[unsafe(no_mangle)]
            fn __webmesh_plugin_new() -> ::std::boxed::Box<dyn $crate::Plugin> {
                ::std::boxed::Box::new($make)
            }
            use $crate::wasm::Component as WebmeshComponent;
            $crate::wasm::bindings::export!(
                WebmeshComponent with_types_in $crate::wasm::bindings
            );
        };
    };
}

/// What `GetInfo` reports, less the capabilities (derived from the trait accessors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub description: String,
}

impl Info {
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Info {
        Info {
            name: name.into(),
            version: version.into(),
            description: description.into(),
        }
    }
}

/// Which address families an IPAM plugin serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpVersions {
    pub v4: bool,
    pub v6: bool,
}

/// Every plugin implements this; capabilities are opted into by returning `Some(self)`
/// from their accessors.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    fn info(&self) -> Info;

    /// The settings the plugin reads in [`Plugin::configure`], for `--help`.
    fn settings(&self) -> &'static [Setting] {
        &[]
    }

    /// The plugin's settings (`--plugin-config NAME.KEY=VALUE` or the config file). An
    /// error stops the node's start-up with its message, so name the key.
    async fn configure(&self, config: Config) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// The node shuts down; flush what needs flushing.
    async fn close(&self) -> Result<(), Error> {
        Ok(())
    }

    fn auth(&self) -> Option<&dyn AuthPlugin> {
        None
    }
    fn ipam(&self) -> Option<&dyn IpamPlugin> {
        None
    }
    fn storage(&self) -> Option<&dyn StoragePlugin> {
        None
    }
    fn watch(&self) -> Option<&dyn WatchPlugin> {
        None
    }
}

/// Authenticates callers of the node's public API.
#[async_trait]
pub trait AuthPlugin: Send + Sync {
    /// The request metadata as headers and the TLS client certificate chain (DER, leaf
    /// first). Returns the caller's identity; an error (normally
    /// [`Error::unauthenticated`]) refuses the call.
    async fn authenticate(&self, req: v1::AuthenticationRequest) -> Result<String, Error>;
}

/// Hands out mesh addresses on join and takes them back on leave.
#[async_trait]
pub trait IpamPlugin: Send + Sync {
    /// The families served: a node has at most one IPv4 and one IPv6 IPAM plugin.
    fn versions(&self) -> IpVersions {
        IpVersions { v4: true, v6: true }
    }
    /// An address for `req.node_id` inside `req.subnet`, in CIDR form (`172.16.0.5/32`,
    /// `fd00:1:2:5::/64`). The same node must get the same address again.
    async fn allocate(&self, req: v1::AllocateIpRequest) -> Result<String, Error>;
    async fn release(&self, req: v1::ReleaseIpRequest) -> Result<(), Error>;
}

/// Receives every committed Raft entry, in order.
#[async_trait]
pub trait StoragePlugin: Send + Sync {
    /// One entry; the node may send an index again after a restart: be idempotent.
    async fn store(&self, req: v1::StoreLogRequest) -> Result<v1::RaftApplyResponse, Error>;
    /// The whole state, replacing what the plugin has ([`decode_snapshot`] reads it).
    async fn restore(&self, snapshot: v1::DataSnapshot) -> Result<(), Error>;
}

/// Receives mesh events: node join, node leave, leader change.
#[async_trait]
pub trait WatchPlugin: Send + Sync {
    async fn emit(&self, event: v1::Event) -> Result<(), Error>;
}

/// `GetInfo`'s answer for `plugin`.
pub fn plugin_info(plugin: &dyn Plugin) -> v1::PluginInfo {
    use v1::PluginCapability as C;
    let info = plugin.info();
    let mut caps = Vec::new();
    if plugin.auth().is_some() {
        caps.push(C::Auth as i32);
    }
    if let Some(ipam) = plugin.ipam() {
        let v = ipam.versions();
        if v.v4 {
            caps.push(C::Ipamv4 as i32);
        }
        if v.v6 {
            caps.push(C::Ipamv6 as i32);
        }
    }
    if plugin.storage().is_some() {
        caps.push(C::Store as i32);
    }
    if plugin.watch().is_some() {
        caps.push(C::Watch as i32);
    }
    v1::PluginInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        capabilities: caps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Both;
    #[async_trait]
    impl Plugin for Both {
        fn info(&self) -> Info {
            Info::new("both", "1", "")
        }
        fn ipam(&self) -> Option<&dyn IpamPlugin> {
            Some(self)
        }
        fn watch(&self) -> Option<&dyn WatchPlugin> {
            Some(self)
        }
    }
    #[async_trait]
    impl IpamPlugin for Both {
        async fn allocate(&self, _: v1::AllocateIpRequest) -> Result<String, Error> {
            Ok("10.0.0.1/32".into())
        }
        async fn release(&self, _: v1::ReleaseIpRequest) -> Result<(), Error> {
            Ok(())
        }
    }
    #[async_trait]
    impl WatchPlugin for Both {
        async fn emit(&self, _: v1::Event) -> Result<(), Error> {
            Ok(())
        }
    }

    #[test]
    fn capabilities_follow_the_accessors() {
        use v1::PluginCapability as C;
        let info = plugin_info(&Both);
        assert_eq!(info.name, "both");
        assert_eq!(
            info.capabilities,
            vec![C::Ipamv4 as i32, C::Ipamv6 as i32, C::Watch as i32]
        );
    }
}
