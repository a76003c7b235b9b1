#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft::fuzzing::canonical_json(data));
