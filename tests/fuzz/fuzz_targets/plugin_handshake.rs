#![no_main]
// See webmesh::fuzzing::plugin_handshake.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::plugin_handshake(data));
