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

/// Loopback server options without OSC or MIDI, with a MIDI map and a recordings folder of
/// this test's own (`suite` names the test file, `tag` the test) in the temp folder.
#[allow(dead_code)] // shared by the test files that start their own server, not by all
pub fn server_options(suite: &str, tag: &str) -> demon_server::ServerOptions {
    let mut o = demon_server::ServerOptions::loopback(0);
    o.osc_bind = None;
    o.midi = false;
    let id = format!("{}-{tag}", std::process::id());
    o.midi_map = std::env::temp_dir().join(format!("demon-{suite}-midi-{id}.json"));
    o.recordings_dir = std::env::temp_dir().join(format!("demon-{suite}-rec-{id}"));
    o
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
