//! Issue 15: a long source does not stop the ticks. A live session prepares a new source
//! (encode, decode of its loop) on a fork of the codec beside its tick loop and applies it at
//! the next tick boundary after it is ready; a later source change overtakes one still being
//! prepared; the recording replays byte for byte.

use std::time::{Duration, Instant};

use demon_engine::BackendSet;
use demon_live::control::{ControlMessage, SourceSpec};
use demon_live::core::{LiveCore, SessionConfig};
use demon_live::error::SessionError;
use demon_live::record::read_session;
use demon_live::session::{RunOptions, start};

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

/// `seconds` of stereo audio at 48 kHz: a chord with a pulse, so the analysis sees notes.
fn audio_source(name: &str, seconds: usize) -> ControlMessage {
    let n = seconds * 48_000;
    let l: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / 48_000.0;
            let pulse = if (t * 2.0).fract() < 0.1 { 1.0 } else { 0.3 };
            pulse
                * 0.2
                * ((t * 220.0 * std::f32::consts::TAU).sin()
                    + (t * 277.2 * std::f32::consts::TAU).sin())
        })
        .collect();
    ControlMessage::SetSource {
        source: SourceSpec::Audio {
            name: name.into(),
            channels: vec![l.clone(), l],
        },
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("demon-source-prepare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn a_long_source_is_prepared_beside_the_ticks_and_a_later_one_overtakes_it() {
    let (rec, live, replayed) = (tmp("s.jsonl"), tmp("live.wav"), tmp("replay.wav"));
    let cfg = SessionConfig {
        song_seconds: 4.0,
        prompt: "house, 124 bpm".into(),
        ..Default::default()
    };
    let core = LiveCore::new(cfg, sketch()).unwrap();
    let sr = core.sample_rate();
    let handle = start(
        core,
        RunOptions {
            realtime: true,
            session_file: Some(rec.clone()),
            sinks: vec![Box::new(
                demon_live::sink::WavRecorder::create(&live, sr, false).unwrap(),
            )],
            ..Default::default()
        },
    )
    .unwrap();
    while handle.state().unwrap().tick < 5 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let first = handle.queue_control(1, audio_source("first", 60)).unwrap();
    let second = handle
        .queue_control(2, audio_source("second", 240))
        .unwrap();

    // The first is overtaken while it is being prepared: answered, not applied.
    let e = first.wait(Duration::from_secs(30)).unwrap_err();
    assert!(matches!(e, SessionError::Superseded(_)), "{e}");
    assert_eq!(e.code(), "superseded");

    // Ticks keep coming while the second one is prepared.
    let (mut last_tick, mut last_change) = (handle.state().unwrap().tick, Instant::now());
    let mut longest_still = Duration::ZERO;
    let started = Instant::now();
    let ticks_before = last_tick;
    while handle.state().unwrap().source.as_deref() != Some("second") {
        assert!(
            started.elapsed() < Duration::from_secs(170),
            "never applied"
        );
        let tick = handle.state().unwrap().tick;
        if tick != last_tick {
            longest_still = longest_still.max(last_change.elapsed());
            (last_tick, last_change) = (tick, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let applied_at = second.wait(Duration::from_secs(5)).unwrap();
    let prepared_for = started.elapsed();
    eprintln!(
        "second source prepared in {prepared_for:?}; {} ticks meanwhile, ticks stood still at most {longest_still:?}",
        last_tick - ticks_before
    );
    assert!(
        last_tick - ticks_before >= 10,
        "ticks ran while the source was prepared"
    );
    assert!(
        // Preparing 240 s on the tick thread stops it for about 10 s.
        longest_still < Duration::from_secs(4),
        "preparing the source held up the ticks for {longest_still:?}"
    );
    let state = handle.state().unwrap();
    assert!(
        (state.song_seconds - 240.0).abs() < 0.05,
        "{}",
        state.song_seconds
    );
    while handle.state().unwrap().tick < applied_at + 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.stop().unwrap();

    // The recording holds the prepared latent at the tick it was applied, so it replays.
    let file = read_session(&rec).unwrap();
    let sources: Vec<_> = file
        .events
        .iter()
        .filter_map(|(tick, m)| match m {
            ControlMessage::SetSource { source } => Some((*tick, source.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(sources.len(), 1, "only the second source was applied");
    assert_eq!(sources[0].0, applied_at);
    assert!(
        matches!(&sources[0].1, SourceSpec::Latent { name, frames, .. } if name == "second" && *frames == 6000),
        "recorded as a latent"
    );
    demon_live::perform::replay(&file, sketch(), &replayed).unwrap();
    let (a, b) = (
        std::fs::read(&live).unwrap(),
        std::fs::read(&replayed).unwrap(),
    );
    assert!(
        a == b,
        "live and replay differ ({} and {} bytes)",
        a.len(),
        b.len()
    );
}

#[test]
fn offline_sessions_apply_a_source_at_the_tick_it_comes() {
    // Without a wall clock there is nothing to keep up with: the source is applied at once,
    // before the next tick, as a script or replay expects.
    let cfg = SessionConfig {
        song_seconds: 4.0,
        prompt: "house, 124 bpm".into(),
        ..Default::default()
    };
    let handle = start(
        LiveCore::new(cfg, sketch()).unwrap(),
        RunOptions {
            realtime: false,
            max_ticks: Some(1_000_000),
            ..Default::default()
        },
    )
    .unwrap();
    // A control queued right behind the source is drained after it. Applied at once, the
    // source answers with a tick no later than the control's; prepared beside the ticks it
    // would be applied at a later boundary than the control drained with it. (Reading the
    // session's tick after the answer would race the free-running ticks.)
    let source = handle.queue_control(3, audio_source("short", 6)).unwrap();
    let behind = handle
        .queue_control(
            3,
            ControlMessage::SetKnob {
                name: "velocity_scale".into(),
                value: 1.5,
            },
        )
        .unwrap();
    let source_tick = source.wait(Duration::from_secs(60)).unwrap();
    let behind_tick = behind.wait(Duration::from_secs(60)).unwrap();
    assert!(
        source_tick <= behind_tick,
        "the source was applied at tick {source_tick}, after the control queued behind it ({behind_tick})"
    );
    let state = handle.state().unwrap();
    assert_eq!(state.source.as_deref(), Some("short"));
    handle.stop().unwrap();
}
