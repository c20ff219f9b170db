//! Plugins as WASM components, run in the node on wasmtime. Sandboxed: no WASI
//! filesystem or network unless the plugin's config grants them (`wasm.preopen`,
//! `wasm.network`), a memory cap (`wasm.memory-mb`, default 64), and a deadline per
//! call (`wasm.deadline-ms`, default 1000) enforced by epoch interruption. A call that
//! traps (deadline, memory, a panic) poisons the instance: the next call gets a fresh
//! one, configured again. Compiled code is cached in the data dir.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tonic::Status;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::querier::StateSlot;

mod wit {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "plugin",
    });
}

use wit::webmesh::plugin::types::Error as WitError;

/// How often the epoch advances: the granularity of call deadlines.
const TICK: Duration = Duration::from_millis(5);
/// A call this short costs less than the hop to the blocking pool and back.
const INLINE_LIMIT: Duration = Duration::from_millis(1);
/// Fast calls in a row before a plugin's calls run on the caller's thread.
const INLINE_AFTER: u32 = 16;

/// One engine for every WASM plugin of the node, with its epoch ticker.
fn engine() -> Result<&'static wasmtime::Engine, String> {
    static ENGINE: OnceLock<Result<wasmtime::Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut cfg = wasmtime::Config::new();
            cfg.epoch_interruption(true);
            cfg.wasm_component_model(true);
            let engine = wasmtime::Engine::new(&cfg).map_err(|e| e.to_string())?;
            let weak = engine.weak();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while let Some(e) = weak.upgrade() {
                        e.increment_epoch();
                        drop(e);
                        std::thread::sleep(TICK);
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The sandbox's limits and grants, from the `wasm.*` keys of the plugin's config.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub memory_bytes: usize,
    pub deadline: Duration,
    /// (host dir, guest dir, read-only)
    pub preopens: Vec<(PathBuf, String, bool)>,
    pub network: bool,
}

impl Sandbox {
    /// Takes the `wasm.*` keys out of `config`; errors name the key and value.
    pub fn from_config(
        config: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<Sandbox, String> {
        let mut sb = Sandbox {
            memory_bytes: 64 << 20,
            deadline: Duration::from_millis(1000),
            preopens: vec![],
            network: false,
        };
        let keys: Vec<String> = config
            .keys()
            .filter(|k| k.starts_with("wasm."))
            .cloned()
            .collect();
        for key in keys {
            let value = config.remove(&key).unwrap_or_default();
            let text = match &value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let bad = |why: &str| format!("config key {key}: bad value {text:?}: {why}");
            match key.as_str() {
                "wasm.memory-mb" => {
                    let mb: usize = text.parse().map_err(|_| bad("a number of MiB"))?;
                    if !(1..=4096).contains(&mb) {
                        return Err(bad("must be 1-4096"));
                    }
                    sb.memory_bytes = mb << 20;
                }
                "wasm.deadline-ms" => {
                    let ms: u64 = text.parse().map_err(|_| bad("a number of milliseconds"))?;
                    if !(1..=60_000).contains(&ms) {
                        return Err(bad("must be 1-60000"));
                    }
                    sb.deadline = Duration::from_millis(ms);
                }
                "wasm.network" => {
                    sb.network = match text.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("true or false")),
                    }
                }
                "wasm.preopen" => {
                    for item in text.split(',').filter(|s| !s.is_empty()) {
                        let parts: Vec<&str> = item.split(':').collect();
                        let (host, guest, ro) = match parts.as_slice() {
                            [h, g] => (*h, *g, false),
                            [h, g, "ro"] => (*h, *g, true),
                            _ => return Err(bad("HOSTDIR:GUESTDIR[:ro],...")),
                        };
                        sb.preopens
                            .push((PathBuf::from(host), guest.to_string(), ro));
                    }
                }
                _ => {
                    return Err(bad(
                        "unknown sandbox key (wasm.memory-mb, wasm.deadline-ms, wasm.preopen, wasm.network)",
                    ));
                }
            }
        }
        Ok(sb)
    }
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    name: String,
    state: StateSlot,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::webmesh::plugin::types::Host for State {}

impl wit::PluginImports for State {
    fn query(&mut self, query: Vec<u8>) -> Result<Vec<Vec<u8>>, WitError> {
        use prost::Message;
        let q = webmesh_api::v1::PluginQuery::decode(query.as_slice()).map_err(|e| WitError {
            code: tonic::Code::InvalidArgument as u32,
            message: format!("query: {e}"),
        })?;
        Ok(super::querier::answer(&self.state, q)
            .into_iter()
            .map(|r| r.encode_to_vec())
            .collect())
    }

    fn log(&mut self, line: String) {
        tracing::info!(plugin = %self.name, "{line}");
    }
}

struct Live {
    store: Store<State>,
    bindings: wit::Plugin,
}

/// A WASM plugin: its compiled component, and an instance made on first use.
pub struct WasmPlugin {
    name: String,
    component: Component,
    linker: Linker<State>,
    sandbox: Sandbox,
    state: StateSlot,
    /// The encoded `PluginConfiguration`, replayed into every fresh instance.
    config: Mutex<Option<Vec<u8>>>,
    live: Mutex<Option<Live>>,
    /// Consecutive calls that finished within [`INLINE_LIMIT`]; see [`run`].
    fast_streak: AtomicU32,
}

/// Compiles `path`, or loads its compiled code from `cache_dir`.
fn load(path: &Path, cache_dir: Option<&Path>) -> Result<Component, String> {
    let engine = engine()?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = xxhash_rust::xxh3::xxh3_128(&bytes);
    // Compiled code fits one wasmtime build and engine configuration only.
    let compat = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    };
    let cached = cache_dir.map(|d| d.join(format!("{key:032x}-{compat:016x}.cwasm")));
    if let Some(c) = &cached
        && c.exists()
    {
        // SAFETY: we wrote this file from `Component::serialize` of an engine with this
        // compatibility hash (in the name); wasmtime also checks the header and refuses
        // a mismatch.
        match unsafe { Component::deserialize_file(engine, c) } {
            Ok(comp) => return Ok(comp),
            Err(e) => {
                tracing::warn!(file = %c.display(), error = %e, "cached WASM code unusable; compiling again")
            }
        }
    }
    let comp = Component::from_binary(engine, &bytes)
        .map_err(|e| format!("{} is not a valid WASM component: {e:#}", path.display()))?;
    if let (Some(c), Ok(code)) = (&cached, comp.serialize()) {
        let tmp = c.with_extension("tmp");
        let written = c
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&tmp, code))
            .and_then(|_| std::fs::rename(&tmp, c));
        if let Err(e) = written {
            tracing::warn!(file = %c.display(), error = %e, "cannot cache compiled WASM code");
        }
    }
    Ok(comp)
}

fn trap_status(name: &str, what: &str, deadline: Duration, e: wasmtime::Error) -> Status {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Status::deadline_exceeded(format!(
            "plugin {name}: {what} ran past its {deadline:?} deadline and was stopped"
        )),
        Some(Trap::OutOfFuel) => {
            Status::deadline_exceeded(format!("plugin {name}: {what} ran out of fuel"))
        }
        _ if format!("{e:#}").contains("memory") => Status::resource_exhausted(format!(
            "plugin {name}: {what} trapped on its memory limit: {e:#}"
        )),
        _ => Status::internal(format!("plugin {name}: {what} trapped: {e:#}")),
    }
}

fn wit_status(name: &str, what: &str, e: WitError) -> Status {
    let code = tonic::Code::from(e.code as i32);
    match code {
        tonic::Code::Ok | tonic::Code::Unknown => {
            Status::internal(format!("plugin {name}: {what}: {}", e.message))
        }
        _ => Status::new(code, e.message),
    }
}

impl WasmPlugin {
    pub fn open(
        name: &str,
        path: &Path,
        sandbox: Sandbox,
        state: StateSlot,
        cache_dir: Option<&Path>,
    ) -> Result<WasmPlugin, String> {
        let component = load(path, cache_dir)?;
        let mut linker = Linker::new(engine()?);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| e.to_string())?;
        wit::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| e.to_string())?;
        Ok(WasmPlugin {
            name: name.to_string(),
            component,
            linker,
            sandbox,
            state,
            config: Mutex::new(None),
            live: Mutex::new(None),
            fast_streak: AtomicU32::new(0),
        })
    }

    /// A fresh instance in a fresh store, under the sandbox's limits.
    fn instantiate(&self) -> Result<Live, String> {
        let mut wasi = WasiCtxBuilder::new();
        for (host, guest, ro) in &self.sandbox.preopens {
            let perms = if *ro {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(host, guest, perms)
                .map_err(|e| format!("wasm.preopen {}: {e}", host.display()))?;
        }
        if self.sandbox.network {
            wasi.inherit_network().allow_ip_name_lookup(true);
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.sandbox.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            engine()?,
            State {
                wasi: wasi.build(),
                table: ResourceTable::new(),
                limits,
                name: self.name.clone(),
                state: self.state.clone(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.ticks());
        let bindings = wit::Plugin::instantiate(&mut store, &self.component, &self.linker)
            .map_err(|e| format!("instantiate: {e:#}"))?;
        let mut live = Live { store, bindings };
        let config = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(c) = config {
            live.store.set_epoch_deadline(self.ticks());
            live.bindings
                .call_configure(&mut live.store, &c)
                .map_err(|e| format!("configure: {e:#}"))?
                .map_err(|e| format!("configure: {}", e.message))?;
        }
        Ok(live)
    }

    fn ticks(&self) -> u64 {
        (self.sandbox.deadline.as_millis() as u64).div_ceil(TICK.as_millis() as u64) + 1
    }

    /// Runs `f` on the live instance (made if needed) under the call deadline. A trap
    /// throws the instance away.
    fn call<T>(
        &self,
        what: &str,
        f: impl FnOnce(&wit::Plugin, &mut Store<State>) -> wasmtime::Result<Result<T, WitError>>,
    ) -> Result<T, Status> {
        let mut guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(
                self.instantiate()
                    .map_err(|e| Status::unavailable(format!("plugin {}: {e}", self.name)))?,
            );
        }
        let live = guard.as_mut().expect("just made");
        live.store.set_epoch_deadline(self.ticks());
        match f(&live.bindings, &mut live.store) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(wit_status(&self.name, what, e)),
            Err(e) => {
                *guard = None;
                self.fast_streak.store(0, Ordering::Relaxed);
                let s = trap_status(&self.name, what, self.sandbox.deadline, e);
                tracing::warn!(plugin = %self.name, error = %s.message(), "WASM plugin trapped; it gets a fresh instance");
                Err(s)
            }
        }
    }

    pub fn get_info(&self) -> Result<Vec<u8>, Status> {
        self.call("GetInfo", |b, s| b.call_get_info(s).map(Ok))
    }

    pub fn configure(&self, config: Vec<u8>) -> Result<(), Status> {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Some(config.clone());
        self.call("Configure", |b, s| b.call_configure(s, &config))
    }

    pub fn close(&self) -> Result<(), Status> {
        self.call("Close", |b, s| b.call_close(s))
    }

    pub fn authenticate(&self, req: Vec<u8>) -> Result<Vec<u8>, Status> {
        self.call("Authenticate", |b, s| b.call_authenticate(s, &req))
    }

    pub fn allocate(&self, req: Vec<u8>) -> Result<Vec<u8>, Status> {
        self.call("Allocate", |b, s| b.call_allocate(s, &req))
    }

    pub fn release(&self, req: Vec<u8>) -> Result<(), Status> {
        self.call("Release", |b, s| b.call_release(s, &req))
    }

    pub fn store(&self, req: Vec<u8>) -> Result<Vec<u8>, Status> {
        self.call("Store", |b, s| b.call_store(s, &req))
    }

    pub fn restore(&self, req: Vec<u8>) -> Result<(), Status> {
        self.call("RestoreSnapshot", |b, s| b.call_restore_snapshot(s, &req))
    }

    pub fn emit(&self, req: Vec<u8>) -> Result<(), Status> {
        self.call("Emit", |b, s| b.call_emit(s, &req))
    }

    /// Time to make a fresh, configured instance (for the benchmark).
    pub fn time_instantiate(&self) -> Result<Duration, String> {
        let t = Instant::now();
        self.instantiate()?;
        Ok(t.elapsed())
    }
}

impl WasmPlugin {
    /// Whether the next call may run on the calling (async) thread: the plugin has
    /// answered fast many times in a row and no other call holds its instance.
    fn inline_ok(&self) -> bool {
        self.fast_streak.load(Ordering::Relaxed) >= INLINE_AFTER && self.live.try_lock().is_ok()
    }

    /// Runs `f`, keeping the plugin's record of fast calls (a trap resets it in `call`).
    fn timed<T>(&self, f: impl FnOnce(&WasmPlugin) -> T) -> T {
        let t = Instant::now();
        let r = f(self);
        if t.elapsed() <= INLINE_LIMIT {
            let _ = self
                .fast_streak
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(1))
                });
        } else {
            self.fast_streak.store(0, Ordering::Relaxed);
        }
        r
    }
}

/// Runs a WASM call. Most plugin calls take microseconds, and a hop to the blocking
/// pool and back costs more than that; so a plugin that has answered fast many times
/// in a row runs on the calling thread. One slow call or trap sends it back to the
/// blocking pool until it has a fast record again, so a plugin that turns slow holds
/// an async worker for at most one call (and never past its epoch deadline).
pub async fn run<T: Send + 'static>(
    plugin: Arc<WasmPlugin>,
    f: impl FnOnce(&WasmPlugin) -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    if plugin.inline_ok() {
        return plugin.timed(f);
    }
    tokio::task::spawn_blocking(move || plugin.timed(f))
        .await
        .map_err(|e| Status::internal(format!("WASM call: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_keys_are_taken_out_and_checked() {
        let mut c = serde_json::json!({
            "tokens": "a:b",
            "wasm.memory-mb": "16",
            "wasm.deadline-ms": 250,
            "wasm.preopen": "/var/lib/x:/data:ro,/tmp:/tmp",
            "wasm.network": "true",
        })
        .as_object()
        .unwrap()
        .clone();
        let sb = Sandbox::from_config(&mut c).unwrap();
        assert_eq!(sb.memory_bytes, 16 << 20);
        assert_eq!(sb.deadline, Duration::from_millis(250));
        assert_eq!(sb.preopens.len(), 2);
        assert!(sb.preopens[0].2 && !sb.preopens[1].2);
        assert!(sb.network);
        assert_eq!(c.keys().collect::<Vec<_>>(), vec!["tokens"]);
        for (k, v) in [
            ("wasm.memory-mb", "lots"),
            ("wasm.deadline-ms", "0"),
            ("wasm.preopen", "/only-one"),
            ("wasm.network", "maybe"),
            ("wasm.fuel", "1"),
        ] {
            let mut c = serde_json::Map::new();
            c.insert(k.into(), v.into());
            let e = Sandbox::from_config(&mut c).unwrap_err();
            assert!(e.starts_with(&format!("config key {k}")), "{e}");
        }
        let defaults = Sandbox::from_config(&mut serde_json::Map::new()).unwrap();
        assert_eq!(defaults.memory_bytes, 64 << 20);
        assert!(!defaults.network && defaults.preopens.is_empty());
    }
}
