#![no_main]
// See webmesh::fuzzing::admin_objects.
libfuzzer_sys::fuzz_target!(|data: &[u8]| webmesh::fuzzing::admin_objects(data));
