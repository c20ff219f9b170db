#![no_main]
// See webmesh::fuzzing::proof_header.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::proof_header(data));
