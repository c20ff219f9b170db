//! `webmesh-plugin-sdk`: write a Webmesh plugin once, run it as a process or as a WASM
//! component.
//!
//! The process and WASM runtimes arrive with the plugin host; today the crate gives
//! plugin authors the v1 API types.

pub use webmesh_api::v1;
