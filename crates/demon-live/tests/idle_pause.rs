//! The idle pause (DEMON's `DEMON_IDLE_PAUSE_S`, issue 12 item 8): after
//! `idle_pause_seconds` without a control no new generation starts and the loop keeps
//! playing; one loop later the windowed decode stops too; the next control resumes both.
//! Counted in ticks, so the same session pauses at the same tick every time.

use demon_engine::BackendSet;
use demon_live::control::ControlMessage;
use demon_live::core::{LiveCore, SessionConfig};

fn backend() -> BackendSet {
    demon_sketch::backend()
}

/// A 2 s song (50 ticks of 40 ms) that pauses after 0.4 s (10 ticks) without a control.
fn core(idle_pause_seconds: Option<f64>) -> LiveCore {
    let cfg = SessionConfig {
        song_seconds: 2.0,
        prompt: "house, 124 bpm".into(),
        receptive_field: Some(demon_engine::ReceptiveField {
            before: 25,
            after: 1,
        }),
        idle_pause_seconds,
        ..Default::default()
    };
    LiveCore::new(cfg, backend()).unwrap()
}

/// Per tick: (slots in flight, windows patched, whether the state says idle).
fn run(core: &mut LiveCore, ticks: usize) -> Vec<(usize, usize, bool)> {
    (0..ticks)
        .map(|_| {
            let out = core.tick(None).unwrap();
            (out.active_slots, out.patches.len(), core.state().idle)
        })
        .collect()
}

/// Windows patched in `ticks`.
fn patched(ticks: &[(usize, usize, bool)]) -> usize {
    ticks.iter().map(|t| t.1).sum()
}

#[test]
fn an_idle_session_stops_generating_then_decoding_and_a_control_resumes_it() {
    let mut core = core(Some(0.4));
    let ticks = run(&mut core, 80);
    // The state after tick 9 is the first 10 ticks without a control: idle from there on.
    assert!(ticks[..9].iter().all(|t| t.0 > 0 && !t.2), "{ticks:?}");
    assert!(ticks[9..].iter().all(|t| t.2), "{ticks:?}");
    // Nothing new is submitted, so the ring drains (S = 8 steps) and stays empty.
    assert!(ticks[30..].iter().all(|t| t.0 == 0), "{ticks:?}");
    // The windowed decode still sweeps the loop with the last latent for one loop (50 ticks
    // after the pause), then stops; without the pause it goes on.
    assert!(patched(&ticks[25..60]) > 0, "{ticks:?}");
    assert_eq!(patched(&ticks[60..]), 0, "{ticks:?}");
    let mut busy = core_without_pause();
    let busy_ticks = run(&mut busy, 80);
    assert!(patched(&busy_ticks[60..]) > 0, "{busy_ticks:?}");

    let generations = core.state().generations;
    let playhead = core.state().playhead_seconds;
    let more = run(&mut core, 20);
    assert_eq!(
        core.state().generations,
        generations,
        "nothing new generated"
    );
    assert_eq!(patched(&more), 0);
    assert_ne!(core.state().playhead_seconds, playhead, "the loop plays on");

    // A control resumes generation at once, and decoding with it.
    core.apply(&ControlMessage::SetKnob {
        name: "denoise".into(),
        value: 0.5,
    })
    .unwrap();
    assert!(!core.state().idle);
    let resumed = run(&mut core, 9);
    assert!(resumed.iter().all(|t| t.0 > 0 && !t.2), "{resumed:?}");
    assert!(core.state().generations > generations, "{resumed:?}");
    assert!(patched(&run(&mut core, 20)) > 0);
}

fn core_without_pause() -> LiveCore {
    core(None)
}

#[test]
fn without_an_idle_pause_the_session_never_pauses_and_a_bad_one_is_refused() {
    let mut core = core_without_pause();
    let ticks = run(&mut core, 120);
    assert!(ticks.iter().all(|t| t.0 > 0 && !t.2), "{ticks:?}");
    for bad in [0.0, -1.0, f64::NAN, 1e9] {
        let cfg = SessionConfig {
            idle_pause_seconds: Some(bad),
            ..Default::default()
        };
        let e = LiveCore::new(cfg, backend()).err().expect("refused");
        assert!(e.to_string().contains("idle pause"), "{e}");
    }
}
