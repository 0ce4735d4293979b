//! Denoise is gradual on every source (issue 10, item 4), on the sketch backend: the published
//! curve of `demon bench --only denoise_curve`, measured with its configuration, for a library
//! song, a non-library render and a recording made with sox.

use demon_engine::BackendSet;
use demon_live::denoise_curve::{
    CurveConfig, CurveSource, DenoiseCurve, denoise_curve, latent_source, recorded_source,
    rendered_source,
};
use demon_sketch::{SketchConditioner, SketchDenoiser, Style};

/// The committed sox recording (made by `make-sox-groove.sh` beside it).
const RECORDING: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../demon-sketch/tests/fixtures/sox-groove.flac"
);

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

fn measure(source: impl FnOnce(&mut BackendSet, &CurveConfig) -> CurveSource) -> DenoiseCurve {
    let mut backend = sketch();
    let cfg = CurveConfig::default();
    let source = source(&mut backend, &cfg);
    let curve = denoise_curve(&mut backend, &source, &cfg).unwrap();
    println!(
        "{} (codec round trip: envelope {:.3}, chroma {:.3})",
        curve.source, curve.codec_envelope_correlation, curve.codec_chroma_correlation
    );
    for p in &curve.points {
        println!(
            "  denoise {:.1}: envelope {:.3}, chroma {:.3}",
            p.denoise, p.envelope_correlation, p.chroma_correlation
        );
    }
    curve
}

/// The acceptance of issue 10 item 4: both correlations at denoise 0.1 are at least 0.8 and
/// neither rises over 0, 0.1, …, 1; and the curve really falls (denoise 1 is far from 0.1).
fn assert_gradual(curve: &DenoiseCurve) {
    assert_eq!(curve.points.len(), 11);
    let p = curve.at(0.1).unwrap();
    assert!(
        p.envelope_correlation >= 0.8 && p.chroma_correlation >= 0.8,
        "{}: at denoise 0.1 {p:?}",
        curve.source
    );
    assert!(curve.is_monotone(), "{curve:#?}");
    let end = curve.at(1.0).unwrap();
    assert!(
        end.envelope_correlation < 0.9 * p.envelope_correlation
            && end.chroma_correlation < 0.8 * p.chroma_correlation,
        "{curve:#?}"
    );
}

#[test]
fn denoise_is_gradual_on_a_library_song() {
    let curve = measure(|backend, cfg| {
        let c = SketchConditioner::default().read(&cfg.spec.prompt).unwrap();
        let latent = SketchDenoiser::default()
            .library_song(&c, Style::House, 1, cfg.frames)
            .unwrap();
        latent_source(backend, "library song house #1", latent).unwrap()
    });
    assert_gradual(&curve);
}

#[test]
fn denoise_is_gradual_on_a_rendered_song_outside_the_library() {
    let curve = measure(|backend, cfg| rendered_source(backend, "funk", 77, cfg.frames).unwrap());
    assert_gradual(&curve);
    // The codec's reading of its own audio is no library song: before the source-edit model,
    // denoise 0.1 already lost the groove here.
    assert!(curve.codec_envelope_correlation < 0.99);
}

#[test]
fn denoise_is_gradual_on_a_sox_recording() {
    let curve = measure(|backend, cfg| {
        let audio = demon_audio::load_file(std::path::Path::new(RECORDING), Default::default())
            .unwrap()
            .to_stereo(48_000);
        recorded_source(backend, "sox-groove.flac", &audio, cfg.frames).unwrap()
    });
    assert_gradual(&curve);
}
