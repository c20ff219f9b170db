#![no_main]
// See webmesh::fuzzing::dns_queries.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::dns_queries(data));
