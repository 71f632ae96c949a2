#![no_main]

#[allow(dead_code)] // each target uses one function of the shared harness
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::codec_decode(data));
