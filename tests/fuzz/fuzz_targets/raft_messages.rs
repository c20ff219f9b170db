#![no_main]
// See webmesh::fuzzing::raft_messages.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::raft_messages(data));
