#![no_main]
// See webmesh::fuzzing::config_file.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::config_file(data));
