//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through the
//! same harness the libFuzzer targets use, on the stable toolchain: every
//! input a fuzzer ever found interesting stays a regression test.

#[path = "../../../../fuzz/harness.rs"]
mod fuzz_harness;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = format!("{}/../../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        // Every prefix too: truncation is the most common real-world damage.
        for cut in (0..data.len()).step_by((data.len() / 64).max(1)) {
            run(&data[..cut]);
        }
        n += 1;
    }
    n
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    assert!(replay("sip_message", fuzz_harness::sip_message) >= 5);
    assert!(replay("sdp", fuzz_harness::sdp) >= 5);
    assert!(replay("rs_metadata", fuzz_harness::rs_metadata) >= 5);
    assert!(replay("recording_body", fuzz_harness::recording_body) >= 5);
    assert!(replay("rtp_stream", fuzz_harness::rtp_stream) >= 1);
    assert!(replay("srtp_unprotect", fuzz_harness::srtp_unprotect) >= 4);
    assert!(replay("codec_decode", fuzz_harness::codec_decode) >= 4);
}
