//! A misbehaving AUTH plugin for the sandbox tests. Header `x-misbehave`: `loop` spins
//! forever, `grab` allocates until it is stopped; anything else authenticates as
//! "well-behaved".

use std::hint::black_box;

use webmesh_plugin_sdk::{AuthPlugin, Error, Info, Plugin, async_trait, v1};

#[derive(Default)]
pub struct Misbehave;

#[async_trait]
impl Plugin for Misbehave {
    fn info(&self) -> Info {
        Info::new("wasm-misbehave", "0", "loops or grabs memory on request")
    }

    fn auth(&self) -> Option<&dyn AuthPlugin> {
        Some(self)
    }
}

#[async_trait]
impl AuthPlugin for Misbehave {
    async fn authenticate(&self, req: v1::AuthenticationRequest) -> Result<String, Error> {
        match req.headers.get("x-misbehave").map(String::as_str) {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            Some("grab") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page so the memory is really used.
                    hoard.push(vec![1u8; 8 << 20]);
                    black_box(&hoard);
                }
            }
            _ => Ok("well-behaved".into()),
        }
    }
}

webmesh_plugin_sdk::wasm_plugin!(Misbehave);
