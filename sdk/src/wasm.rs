//! A plugin as a WASM component: the SDK implements the WIT world's exports on top of
//! the [`Plugin`](crate::Plugin) traits; [`wasm_plugin!`](crate::wasm_plugin) in the
//! plugin's library names the plugin value.

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use prost::Message;

use crate::{Config, Error, Plugin, plugin_info, v1};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "webmesh_plugin_sdk::wasm::bindings",
    });
}

use bindings::webmesh::plugin::types::Error as WitError;

unsafe extern "Rust" {
    /// Defined by `wasm_plugin!` in the plugin's crate.
    fn __webmesh_plugin_new() -> Box<dyn Plugin>;
}

fn plugin() -> &'static dyn Plugin {
    static P: OnceLock<Box<dyn Plugin>> = OnceLock::new();
    // SAFETY: `wasm_plugin!` defines the symbol with exactly this signature.
    P.get_or_init(|| unsafe { __webmesh_plugin_new() }).as_ref()
}

/// Runs a plugin future to completion. Components here are single-threaded with no
/// event loop: a plugin future that would wait is a bug, reported as a trap.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a WASM plugin's futures must complete without waiting"),
    }
}

fn wit(e: Error) -> WitError {
    WitError {
        code: e.code.grpc() as u32,
        message: e.message,
    }
}

fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, WitError> {
    M::decode(bytes).map_err(|e| wit(Error::invalid_argument(format!("{what}: {e}"))))
}

fn missing(what: &str) -> WitError {
    wit(Error::unimplemented(format!(
        "this plugin has no {what} capability"
    )))
}

/// The component's exports, on top of the plugin.
#[doc(hidden)]
pub struct Component;

impl bindings::Guest for Component {
    fn get_info() -> Vec<u8> {
        plugin_info(plugin()).encode_to_vec()
    }

    fn configure(config: Vec<u8>) -> Result<(), WitError> {
        let req: v1::PluginConfiguration = decode("config", &config)?;
        let cfg = Config::from_struct(req.config.as_ref()).map_err(wit)?;
        block_on(plugin().configure(cfg)).map_err(wit)
    }

    fn close() -> Result<(), WitError> {
        block_on(plugin().close()).map_err(wit)
    }

    fn authenticate(request: Vec<u8>) -> Result<Vec<u8>, WitError> {
        let auth = plugin().auth().ok_or_else(|| missing("AUTH"))?;
        let req = decode("request", &request)?;
        let id = block_on(auth.authenticate(req)).map_err(wit)?;
        Ok(v1::AuthenticationResponse { id }.encode_to_vec())
    }

    fn allocate(request: Vec<u8>) -> Result<Vec<u8>, WitError> {
        let ipam = plugin().ipam().ok_or_else(|| missing("IPAM"))?;
        let req = decode("request", &request)?;
        let ip = block_on(ipam.allocate(req)).map_err(wit)?;
        Ok(v1::AllocatedIp { ip }.encode_to_vec())
    }

    fn release(request: Vec<u8>) -> Result<(), WitError> {
        let ipam = plugin().ipam().ok_or_else(|| missing("IPAM"))?;
        let req = decode("request", &request)?;
        block_on(ipam.release(req)).map_err(wit)
    }

    fn store(request: Vec<u8>) -> Result<Vec<u8>, WitError> {
        let s = plugin().storage().ok_or_else(|| missing("STORE"))?;
        let req = decode("request", &request)?;
        Ok(block_on(s.store(req)).map_err(wit)?.encode_to_vec())
    }

    fn restore_snapshot(snapshot: Vec<u8>) -> Result<(), WitError> {
        let s = plugin().storage().ok_or_else(|| missing("STORE"))?;
        let req = decode("snapshot", &snapshot)?;
        block_on(s.restore(req)).map_err(wit)
    }

    fn emit(event: Vec<u8>) -> Result<(), WitError> {
        let w = plugin().watch().ok_or_else(|| missing("WATCH"))?;
        let req = decode("event", &event)?;
        block_on(w.emit(req)).map_err(wit)
    }
}

/// Writes a line to the node's log, tagged with the plugin's name.
pub fn log(line: &str) {
    bindings::log(line);
}

/// Read-only access to the mesh state (see the process flavour for the semantics).
#[derive(Clone, Copy, Default)]
pub struct Querier;

/// The plugin's querier.
pub fn querier() -> Querier {
    Querier
}

impl Querier {
    /// Always: the node answers queries of WASM plugins directly.
    pub fn is_connected(&self) -> bool {
        true
    }

    fn query(
        &self,
        command: v1::plugin_query::QueryCommand,
        query: &str,
    ) -> Result<Vec<v1::PluginQueryResult>, Error> {
        let q = v1::PluginQuery {
            id: String::new(),
            command: command as i32,
            query: query.to_string(),
        };
        let out = bindings::query(&q.encode_to_vec()).map_err(|e| Error {
            code: crate::Code::from_grpc(e.code as i32),
            message: e.message,
        })?;
        out.iter()
            .map(|b| {
                v1::PluginQueryResult::decode(b.as_slice())
                    .map_err(|e| Error::internal(format!("query result: {e}")))
            })
            .collect()
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        let r = self.query(v1::plugin_query::QueryCommand::Get, key)?;
        match r.into_iter().next() {
            Some(r) if r.error == "key not found" => Ok(None),
            Some(r) if !r.error.is_empty() => Err(Error::internal(r.error)),
            Some(r) => Ok(r.value.into_iter().next()),
            None => Ok(None),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let r = self.query(v1::plugin_query::QueryCommand::List, prefix)?;
        match r.into_iter().next() {
            Some(r) if !r.error.is_empty() => Err(Error::internal(r.error)),
            Some(r) => Ok(r.value),
            None => Ok(vec![]),
        }
    }

    pub async fn iter(&self, prefix: &str) -> Result<Vec<(String, String)>, Error> {
        let r = self.query(v1::plugin_query::QueryCommand::Iter, prefix)?;
        let mut out = Vec::new();
        for r in r {
            if r.error == "EOF" {
                break;
            }
            if !r.error.is_empty() {
                return Err(Error::internal(r.error));
            }
            out.push((r.key, r.value.into_iter().next().unwrap_or_default()));
        }
        Ok(out)
    }
}
