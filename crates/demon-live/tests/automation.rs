//! Knob automation lanes (issue 12, item 3): the playhead moves an automated knob along its
//! lane at every tick boundary; a hand move of that knob is refused until the lane is cleared;
//! presets carry lanes; and `demon replay` of a session with a denoise lane is bit-identical
//! to what played live (and differs from the same session without the lane).

use std::time::Duration;

use demon_engine::{BackendSet, Denoiser};
use demon_live::automation::{AutomationLane, LaneInterpolation, LanePoint};
use demon_live::control::ControlMessage;
use demon_live::core::{LiveCore, SessionConfig, latent_spec};
use demon_live::session::{RunOptions, start};
use demon_sketch::SketchDenoiser;

fn backend(denoiser: Box<dyn Denoiser>) -> BackendSet {
    demon_sketch::backend_with(denoiser)
}

fn config(seconds: f64) -> SessionConfig {
    SessionConfig {
        song_seconds: seconds,
        prompt: "house, 124 bpm".into(),
        receptive_field: Some(demon_engine::ReceptiveField {
            before: 25,
            after: 1,
        }),
        ..Default::default()
    }
}

/// A composed funk song as the source (denoise is how far generations depart from it).
fn with_source(mut c: SessionConfig) -> SessionConfig {
    let frames = (c.song_seconds * 25.0).round() as usize;
    let song = demon_sketch::composer::compose(demon_sketch::composer::SongSpec {
        style: demon_sketch::Style::from_index(2).unwrap(),
        bpm: 110.0,
        tonic: 4,
        minor: true,
        seed: 5,
        frames,
    });
    let t = candle_core::Tensor::from_vec(song.latent, (1, frames, 64), &candle_core::Device::Cpu)
        .unwrap();
    c.source = latent_spec("composed", &t).unwrap();
    c
}

fn lane(points: &[(f64, f64)], interpolation: LaneInterpolation) -> AutomationLane {
    AutomationLane {
        points: points
            .iter()
            .map(|&(at_s, value)| LanePoint { at_s, value })
            .collect(),
        interpolation,
    }
}

fn automate(knob: &str, lane: Option<AutomationLane>) -> ControlMessage {
    ControlMessage::SetAutomation {
        knob: knob.into(),
        lane,
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("demon-automation-{}-{name}", std::process::id()))
}

#[test]
fn the_playhead_moves_an_automated_knob_along_its_lane() {
    let mut core =
        LiveCore::new(config(2.0), backend(Box::new(SketchDenoiser::default()))).unwrap();
    let denoise = lane(&[(0.25, 0.2), (1.25, 0.9)], LaneInterpolation::Linear);
    core.apply(&automate("denoise", Some(denoise.clone())))
        .unwrap();
    // The slew limits how fast the effective value follows; the target is the lane's value.
    let mut seen = Vec::new();
    for _ in 0..60 {
        let at = core.state().playhead_seconds;
        core.tick(None).unwrap();
        let st = core.state();
        let want = denoise.value_at(at);
        assert!(
            (st.targets["denoise"] - want).abs() < 1e-12,
            "at {at} s the target is {} where the lane says {want}",
            st.targets["denoise"]
        );
        seen.push(want);
    }
    assert!(
        seen.contains(&0.2) && seen.contains(&0.9),
        "the loop passed both ends of the lane: {seen:?}"
    );
    assert!(
        seen.iter().any(|&v| v > 0.25 && v < 0.85),
        "and the ramp between them"
    );
    assert_eq!(core.state().automation["denoise"], denoise);

    // A hand move is refused while the lane is on, and nothing changes.
    let before = core.state().targets["denoise"];
    let e = core
        .apply(&ControlMessage::SetKnob {
            name: "denoise".into(),
            value: 0.5,
        })
        .unwrap_err();
    assert!(e.to_string().contains("automation lane"), "{e}");
    assert_eq!(core.state().targets["denoise"], before);
    // Cleared, the knob keeps the lane's last value and moves by hand again.
    core.apply(&automate("denoise", None)).unwrap();
    core.tick(None).unwrap();
    assert_eq!(core.state().targets["denoise"], before);
    assert!(core.state().automation.is_empty());
    core.apply(&ControlMessage::SetKnob {
        name: "denoise".into(),
        value: 0.5,
    })
    .unwrap();
    assert_eq!(core.state().targets["denoise"], 0.5);
}

#[test]
fn bad_lanes_are_refused_naming_the_problem_and_change_nothing() {
    let mut core =
        LiveCore::new(config(2.0), backend(Box::new(SketchDenoiser::default()))).unwrap();
    let cases = [
        (
            "depth",
            lane(&[(0.0, 2.0)], LaneInterpolation::Step),
            "reshapes the ring",
        ),
        (
            "wobble",
            lane(&[(0.0, 0.5)], LaneInterpolation::Step),
            "wobble",
        ),
        (
            "denoise",
            lane(&[(0.0, 1.5)], LaneInterpolation::Step),
            "point 0",
        ),
        ("denoise", lane(&[], LaneInterpolation::Step), "no points"),
        (
            "denoise",
            lane(&[(1.0, 0.5), (0.5, 0.6)], LaneInterpolation::Step),
            "does not come after",
        ),
        (
            "lora:nope",
            lane(&[(0.0, 0.5)], LaneInterpolation::Step),
            "nope",
        ),
    ];
    let before = core.state();
    for (knob, l, says) in cases {
        let e = core.apply(&automate(knob, Some(l))).unwrap_err();
        assert!(e.to_string().contains(says), "{knob}: {e}");
    }
    let after = core.state();
    assert!(after.automation.is_empty());
    assert_eq!(after.targets, before.targets);
}

#[test]
fn presets_carry_lanes() {
    let mut core =
        LiveCore::new(config(2.0), backend(Box::new(SketchDenoiser::default()))).unwrap();
    let feedback = lane(&[(0.0, 0.0), (1.0, 0.5)], LaneInterpolation::Smooth);
    core.apply(&automate("feedback", Some(feedback.clone())))
        .unwrap();
    let preset = core.preset();
    assert_eq!(preset.automation["feedback"], feedback);
    let json = preset.to_json();
    let back = demon_live::preset::Preset::from_json(json.as_bytes()).unwrap();
    assert_eq!(back, preset);
    // Loaded into a fresh session, the lane drives the knob there too.
    let mut other =
        LiveCore::new(config(2.0), backend(Box::new(SketchDenoiser::default()))).unwrap();
    other.apply(&ControlMessage::load_preset(back)).unwrap();
    assert_eq!(other.state().automation["feedback"], feedback);
    // A preset without lanes clears them (a preset is the whole state).
    let plain = LiveCore::new(config(2.0), backend(Box::new(SketchDenoiser::default())))
        .unwrap()
        .preset();
    assert!(!plain.to_json().contains("automation"));
    other.apply(&ControlMessage::load_preset(plain)).unwrap();
    assert!(other.state().automation.is_empty());
}

#[test]
fn a_denoise_lane_replays_bit_identically() {
    let (rec, live, replayed, without) = (
        tmp("lane.jsonl"),
        tmp("lane-live.wav"),
        tmp("lane-replay.wav"),
        tmp("lane-without.wav"),
    );
    let core = LiveCore::new(
        with_source(config(2.0)),
        backend(Box::new(SketchDenoiser::default())),
    )
    .unwrap();
    let sr = core.sample_rate();
    let handle = start(
        core,
        RunOptions {
            realtime: false,
            session_file: Some(rec.clone()),
            sinks: vec![Box::new(
                demon_live::sink::WavRecorder::create(&live, sr, false).unwrap(),
            )],
            ..Default::default()
        },
    )
    .unwrap();
    let wait_tick = |t: u64| {
        while handle.state().unwrap().tick < t {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_tick(5);
    assert_eq!(
        handle.state().unwrap().source.as_deref(),
        Some("composed"),
        "denoise acts on a source"
    );
    let steps = lane(&[(0.0, 0.1), (1.0, 0.95)], LaneInterpolation::Step);
    handle
        .control(1, automate("denoise", Some(steps)), Duration::from_secs(30))
        .unwrap();
    wait_tick(60);
    // Redrawn while it plays: the new lane takes over at the tick it arrives.
    let smooth = lane(&[(0.0, 0.9), (2.0, 0.3)], LaneInterpolation::Smooth);
    handle
        .control(
            1,
            automate("denoise", Some(smooth)),
            Duration::from_secs(30),
        )
        .unwrap();
    wait_tick(120);
    handle.stop().unwrap();

    let file = demon_live::record::read_session(&rec).unwrap();
    let lanes = file
        .events
        .iter()
        .filter(|(_, m)| matches!(m, ControlMessage::SetAutomation { .. }))
        .count();
    assert_eq!(lanes, 2, "both lanes recorded: {:?}", file.events);
    demon_live::perform::replay(
        &file,
        backend(Box::new(SketchDenoiser::default())),
        &replayed,
    )
    .unwrap();
    let (a, b) = (
        std::fs::read(&live).unwrap(),
        std::fs::read(&replayed).unwrap(),
    );
    assert!(a.len() > 44 + 100 * 1920 * 4, "{} bytes", a.len());
    assert!(a == b, "live and replay differ");

    // The same session without its lanes plays something else: the lanes are heard.
    let mut bare = file.clone();
    bare.events
        .retain(|(_, m)| !matches!(m, ControlMessage::SetAutomation { .. }));
    demon_live::perform::replay(
        &bare,
        backend(Box::new(SketchDenoiser::default())),
        &without,
    )
    .unwrap();
    let c = std::fs::read(&without).unwrap();
    assert_eq!(c.len(), a.len());
    assert!(c != a, "the lanes changed nothing");
    for p in [rec, live, replayed, without] {
        let _ = std::fs::remove_file(p);
    }
}
