#![no_main]
// See webmesh::fuzzing::turn_packets.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::turn_packets(data));
