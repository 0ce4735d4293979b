//! The library applies candle's thread setting itself (issue 13 item 6): built on a single-thread
//! process with `CANDLE_NUM_THREADS` unset, a backend object leaves it set to 1. This test has no
//! harness (`harness = false`), so it runs on the process's only thread, like a program's `main`.

use candle_core::Device;
use demon_acestep::threads::{CandleThreads, process_threads};
use demon_acestep::{AceStepCodec, VaeConfig};

fn main() {
    // The check needs the variable unset: when the environment sets it, run this test again as a
    // child process without it.
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .env_remove("CANDLE_NUM_THREADS")
            .status()
            .expect("run the test without CANDLE_NUM_THREADS");
        assert!(
            status.success(),
            "the check without CANDLE_NUM_THREADS failed"
        );
        return;
    }
    assert_eq!(
        process_threads(),
        Some(1),
        "a harness-free test runs on one thread"
    );
    let tiny = VaeConfig {
        encoder_hidden_size: 4,
        downsampling_ratios: vec![2],
        channel_multiples: vec![1],
        decoder_channels: 4,
        decoder_input_channels: 2,
        audio_channels: 1,
        sampling_rate: 100,
    };
    let _codec = AceStepCodec::random(&tiny, 0, &Device::Cpu, false).expect("tiny codec");
    assert_eq!(
        std::env::var("CANDLE_NUM_THREADS").as_deref(),
        Ok("1"),
        "building a backend object set candle's pool to one thread"
    );
    assert_eq!(demon_acestep::threads::apply(), CandleThreads::SetToOne);
    println!("threads: CANDLE_NUM_THREADS=1 set by the library");
}
