#![no_main]
// See webmesh::fuzzing::raw_writes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::raw_writes(data));
