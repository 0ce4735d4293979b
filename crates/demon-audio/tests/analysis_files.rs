//! Analysis of committed audio files: the sox-made click track (`tools/make-click-fixture.sh`).

use std::path::Path;

use demon_audio::analysis::{analyze, estimate_tempo};
use demon_audio::{LoadLimits, load_file};

fn fixture(name: &str) -> demon_engine::Audio {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let d = load_file(&path, LoadLimits::default()).expect("fixture decodes");
    demon_engine::Audio::new(d.sample_rate, d.channels).expect("audio")
}

#[test]
fn sox_click_track_is_108_bpm() {
    let audio = fixture("click-108bpm.flac");
    assert_eq!(audio.sample_rate, 44_100);
    let t = estimate_tempo(&audio).expect("a tempo");
    // One beat every 24 500 samples at 44.1 kHz is exactly 108 BPM.
    assert!((t.bpm - 108.0).abs() / 108.0 < 0.01, "{t:?}");
    assert!((t.bpm - 108.0).abs() < 0.1, "{t:?}");
    let info = analyze(&audio);
    assert!((info.duration_seconds - audio.seconds()).abs() < 1e-9);
    assert_eq!(info.bpm.map(|b| b.bpm), Some(t.bpm));
    // A click track has no key worth naming, but the analysis must not fail on it.
    assert!(
        info.integrated_lufs
            .is_some_and(|l| l.is_finite() && l < 0.0),
        "{info:?}"
    );
}
