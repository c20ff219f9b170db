#![no_main]
// See webmesh::fuzzing::signalling.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::signalling(data));
