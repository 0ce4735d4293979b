//! Knob-to-ear accounting and the adaptive lead in a live core (issue 10, item 1): which slice
//! first carries a control follows its class exactly (a shared-lane change the first latent
//! finished after it, a per-slot change one submitted after it: S ticks at least), the slice
//! named is the one the tick patched, and an adaptive lead shrinks on this cheap backend while a session file records it, so the replay is still byte-identical.

use std::time::Instant;

use demon_engine::BackendSet;
use demon_live::control::ControlMessage;
use demon_live::core::{LEAD_FLOOR_FRAMES, LiveCore, SessionConfig};
use demon_live::latency::EarClass;
use demon_live::record::{ScriptEvent, read_session};

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

const STEPS: u64 = 6;

fn config() -> SessionConfig {
    SessionConfig {
        song_seconds: 6.0,
        prompt: "house, 124 bpm".into(),
        knobs: [
            ("steps".to_string(), STEPS as f64),
            ("depth".to_string(), 3.0),
        ]
        .into(),
        ..Default::default()
    }
}

/// Tick until control `id` is reflected; returns (ticks taken, that tick's output).
fn until_reflected(core: &mut LiveCore, id: u64) -> (u64, demon_live::core::TickOutput) {
    let t0 = core.tick_index();
    for _ in 0..100 {
        let out = core.tick(None).unwrap();
        if out.reflected.iter().any(|r| r.id == id) {
            return (out.tick + 1 - t0, out);
        }
    }
    panic!("control {id} was never reflected");
}

#[test]
fn the_first_carrying_slice_follows_the_class() {
    let mut core = LiveCore::new(config(), sketch()).unwrap();
    for _ in 0..3 * STEPS {
        core.tick(None).unwrap();
    }
    for (id, trial) in (1..=2 * STEPS).zip(0..) {
        // A shared-lane change: the first tick that finishes a latent carries it.
        let msg = ControlMessage::SetKnob {
            name: "velocity_scale".into(),
            value: if trial % 2 == 0 { 0.6 } else { 1.3 },
        };
        core.apply(&msg).unwrap();
        core.track_control(2 * id, &msg, Instant::now());
        let t0 = core.tick_index();
        let mut first_finish = None;
        let (ticks, out) = loop {
            let out = core.tick(None).unwrap();
            if out.finished > 0 && first_finish.is_none() {
                first_finish = Some(out.tick);
            }
            if out.reflected.iter().any(|r| r.id == 2 * id) {
                break (out.tick + 1 - t0, out);
            }
            assert!(out.tick < t0 + 50, "never reflected");
        };
        assert_eq!(
            Some(out.tick),
            first_finish,
            "shared lane: the first finished latent after the change carries it"
        );
        assert!(ticks <= STEPS, "in flight slots carry it: {ticks} ticks");
        let r = out.reflected.iter().find(|r| r.id == 2 * id).unwrap();
        assert_eq!(r.class, EarClass::SharedLane);
        // The slice named is the one this tick patched, exactly.
        let (start, audio) = &out.patches[0];
        assert_eq!((r.start_sample, r.samples), (*start, audio[0].len() as u64));
        // It lies ahead of the playhead by the lead (the window starts at the target frame).
        let hop = 1920u64;
        assert_eq!(
            r.start_sample / hop,
            (out.playhead / hop + out.lead_frames as u64) % (core.song_frames() as u64)
        );

        // A per-slot change: only a latent submitted after it, so S ticks at the least.
        let msg = ControlMessage::SetKnob {
            name: "seed".into(),
            value: 500.0 + trial as f64,
        };
        core.apply(&msg).unwrap();
        core.track_control(2 * id + 1, &msg, Instant::now());
        let (ticks, out) = until_reflected(&mut core, 2 * id + 1);
        let r = out.reflected.iter().find(|r| r.id == 2 * id + 1).unwrap();
        assert_eq!(r.class, EarClass::PerSlot);
        assert!(
            (STEPS..=3 * STEPS).contains(&ticks),
            "per slot: {ticks} ticks (S {STEPS}): a whole schedule, plus the queue's wait"
        );
    }
}

#[test]
fn transport_controls_are_not_counted() {
    let mut core = LiveCore::new(config(), sketch()).unwrap();
    let msg = ControlMessage::Seek { seconds: 1.0 };
    core.apply(&msg).unwrap();
    core.track_control(1, &msg, Instant::now());
    for _ in 0..4 * STEPS {
        let out = core.tick(None).unwrap();
        assert!(out.reflected.is_empty());
    }
}

#[test]
fn the_adaptive_lead_shrinks_and_replays_exactly() {
    let dir = std::env::temp_dir().join(format!("demon-lead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (session, live, replayed) = (
        dir.join("s.jsonl"),
        dir.join("live.wav"),
        dir.join("replay.wav"),
    );
    let mut cfg = config();
    cfg.adaptive_lead = true;
    let script: Vec<ScriptEvent> = (0..8)
        .map(|i| ScriptEvent {
            at: 0.5 + i as f64 * 0.7,
            message: ControlMessage::SetKnob {
                name: if i % 2 == 0 { "velocity_scale" } else { "seed" }.into(),
                value: 0.8 + 0.1 * i as f64,
            },
        })
        .collect();
    demon_live::perform::perform(
        cfg,
        sketch(),
        &script,
        8.0,
        Some(&session),
        Some(&live),
        false,
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    let file = read_session(&session).unwrap();
    let leads: Vec<u32> = file.clock.iter().map(|c| c.2).collect();
    assert_eq!(
        leads[0], 13,
        "starts at lead_seconds (0.5 s: 12.5 frames, rounded up)"
    );
    // The sketch's ticks cost a few ms, so the lead shrinks (how far depends on this machine's
    // tick-time jitter: `lead::tests` checks the controller's arithmetic exactly).
    let lowest = *leads.iter().min().unwrap();
    assert!(
        (LEAD_FLOOR_FRAMES..13).contains(&lowest),
        "the lead shrank to {lowest} frames"
    );
    // It shrinks by at most a quarter of its distance to the target (at least a frame), and
    // the target is never under the floor.
    for w in leads.windows(2) {
        let most = ((w[0].saturating_sub(LEAD_FLOOR_FRAMES)) / 4).max(1);
        assert!(
            w[1] + most >= w[0],
            "shrinks a quarter of the way at most: {w:?}"
        );
    }
    demon_live::perform::replay(&file, sketch(), &replayed).unwrap();
    let (a, b) = (
        std::fs::read(&live).unwrap(),
        std::fs::read(&replayed).unwrap(),
    );
    assert!(a == b, "live and replay differ");
    std::fs::remove_dir_all(&dir).ok();
}
