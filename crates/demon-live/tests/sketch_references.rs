//! The `timbre` and `structure` faders of a live session on the sketch backend (issue 11 item
//! 11, issue 12 item 1): each changes what the session generates from its source, and at 0 the
//! session is byte-identical to one that never touched them. Ported to the rooms of `LiveCore`:
//! the faders are catalog knobs of `Controls`, set here through the initial configuration.

use candle_core::Tensor;
use demon_engine::BackendSet;
use demon_live::control::SourceSpec;
use demon_live::core::{LiveCore, SessionConfig, latent_spec};
use demon_sketch::Style;
use demon_sketch::composer::{SongSpec, compose};

const SECONDS: f64 = 4.0;

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

/// An ambient song (soft voice, long reverb) as the playing source of a techno prompt.
fn source() -> SourceSpec {
    let frames = (SECONDS * 25.0) as usize;
    let song = compose(SongSpec {
        style: Style::Ambient,
        bpm: 130.0,
        tonic: 9,
        minor: true,
        seed: 11,
        frames,
    });
    let t = Tensor::from_vec(song.latent, (1, frames, 64), &candle_core::Device::Cpu).unwrap();
    latent_spec("ambient reference", &t).unwrap()
}

/// The bits of the newest generation after a fixed number of ticks, with `knobs` set at start.
fn generate(knobs: &[(&str, f64)]) -> Vec<u32> {
    let cfg = SessionConfig {
        song_seconds: SECONDS,
        prompt: "techno, 130 bpm".into(),
        source: source(),
        knobs: knobs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        // The synthesizer's design bound (≥ the measured field): skips the measurement.
        receptive_field: Some(demon_engine::ReceptiveField {
            before: demon_sketch::synth::DESIGN_MARGIN_BEFORE,
            after: demon_sketch::synth::DESIGN_MARGIN_AFTER,
        }),
        ..Default::default()
    };
    let mut core = LiveCore::new(cfg, sketch()).unwrap();
    for _ in 0..24 {
        core.tick(None).unwrap();
    }
    core.latest_audio()
        .expect("a generation finished")
        .channels
        .iter()
        .flatten()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn timbre_and_structure_faders_change_the_sketch_and_zero_restores_it() {
    let plain = generate(&[]);
    assert_eq!(generate(&[("timbre", 0.0), ("structure", 0.0)]), plain);
    let timbre = generate(&[("timbre", 1.0)]);
    assert_ne!(
        timbre, plain,
        "the timbre fader changes nothing on the sketch"
    );
    let structure = generate(&[("structure", 1.0)]);
    assert_ne!(structure, plain, "the structure fader changes nothing");
    assert_ne!(structure, timbre);
}
