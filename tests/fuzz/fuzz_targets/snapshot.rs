#![no_main]
// See webmesh::fuzzing::snapshot.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::snapshot(data));
