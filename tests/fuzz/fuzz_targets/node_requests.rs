#![no_main]
// See webmesh::fuzzing::node_requests.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::node_requests(data));
