//! What the server tests share: a real-time live session on the sketch backend.

use demon_engine::{BackendSet, ReceptiveField};
use demon_live::core::{LiveCore, SessionConfig};
use demon_live::session::{RunOptions, SessionHandle, start};

fn sketch() -> BackendSet {
    let d = candle_core::Device::Cpu;
    BackendSet {
        name: "sketch".into(),
        denoiser: Box::new(demon_sketch::SketchDenoiser::new(d.clone())),
        codec: Box::new(demon_sketch::SketchCodec::new(d.clone())),
        conditioner: Box::new(demon_sketch::SketchConditioner::new(d)),
    }
}

/// A session of `song_seconds` paced to the wall clock (a fixed receptive field skips the
/// start-up measurement).
pub fn session(song_seconds: f64) -> SessionHandle {
    session_with(
        song_seconds,
        RunOptions {
            realtime: true,
            ..Default::default()
        },
    )
}

/// [`session`] with other run options (a session file, ...).
pub fn session_with(song_seconds: f64, opts: RunOptions) -> SessionHandle {
    let cfg = SessionConfig {
        song_seconds,
        prompt: "house, 124 bpm".into(),
        receptive_field: Some(ReceptiveField {
            before: 25,
            after: 1,
        }),
        ..Default::default()
    };
    let core = LiveCore::new(cfg, sketch()).unwrap();
    start(core, opts).unwrap()
}
