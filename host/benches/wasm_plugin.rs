//! The WASM runtime's own costs, for one component (default: the auth-allowlist built
//! for wasm32-wasip2 in release):
//!
//!   cargo build --release --target wasm32-wasip2 --lib -p auth-allowlist
//!   cargo bench -p webmesh --bench wasm_plugin [-- PATH.wasm]
//!
//! Reports: compiling the component (no cache), loading it from the compiled-code
//! cache, a fresh configured instance (what a trap costs), and one Authenticate call
//! on a live instance (p50 / p99).

use std::time::{Duration, Instant};

use prost::Message;
use webmesh::plugins::wasm::{Sandbox, WasmPlugin};
use webmesh_api::v1;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let path = std::env::args()
        .skip(1)
        .find(|a| a.ends_with(".wasm"))
        .unwrap_or_else(|| {
            let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
            format!("{target}/wasm32-wasip2/release/auth_allowlist.wasm")
        });
    let dir = tempfile::tempdir().expect("tempdir");
    let state = webmesh::plugins::StateSlot::new(
        webmesh::store::engine::Engine::open(&dir.path().join("db")).expect("db"),
    );
    let cache = dir.path().join("cache");
    let config = v1::PluginConfiguration {
        config: Some(
            serde_json::from_value(serde_json::json!({"tokens": "alice:s3cret"})).expect("struct"),
        ),
    }
    .encode_to_vec();
    let sandbox = || Sandbox::from_config(&mut serde_json::Map::new()).expect("sandbox");

    let t = Instant::now();
    let p = WasmPlugin::open(
        "bench",
        path.as_ref(),
        sandbox(),
        state.clone(),
        Some(&cache),
    )
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    let compile = t.elapsed();
    let t = Instant::now();
    let p2 = WasmPlugin::open(
        "bench",
        path.as_ref(),
        sandbox(),
        state.clone(),
        Some(&cache),
    )
    .expect("cached");
    let cached = t.elapsed();
    drop(p2);
    p.configure(config).expect("configure");

    let mut inst: Vec<Duration> = (0..50)
        .map(|_| p.time_instantiate().expect("instantiate"))
        .collect();
    let req = v1::AuthenticationRequest {
        headers: [("authorization".to_string(), "Bearer s3cret".to_string())].into(),
        certificates: vec![],
    }
    .encode_to_vec();
    for _ in 0..1000 {
        p.authenticate(req.clone()).expect("auth");
    }
    let mut calls: Vec<Duration> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            p.authenticate(req.clone()).expect("auth");
            t.elapsed()
        })
        .collect();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("component: {path} ({} KiB)\n", size / 1024);
    println!("| step | p50 | p99 |\n|---|---:|---:|");
    println!("| compile (no cache) | {compile:.1?} | |");
    println!("| load from the code cache | {cached:.1?} | |");
    println!(
        "| fresh configured instance | {:.1?} | {:.1?} |",
        pct(&mut inst, 0.5),
        pct(&mut inst, 0.99)
    );
    println!(
        "| Authenticate call | {:.1?} | {:.1?} |",
        pct(&mut calls, 0.5),
        pct(&mut calls, 0.99)
    );
}
