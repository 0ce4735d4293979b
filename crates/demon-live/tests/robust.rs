//! Issue 15: nothing stops the session. A failing tick is reported once and the control that
//! made ticks fail is taken back; a failed session-file write stops the recording, not the
//! session; random valid controls never leave the session stuck (D4).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use demon_engine::{BackendSet, DenoiseBatch, Denoiser, EngineError};
use demon_live::bus::Event;
use demon_live::control::ControlMessage;
use demon_live::controls::KNOBS;
use demon_live::core::{LiveCore, SessionConfig};
use demon_live::session::{RunOptions, SessionHandle, start};
use demon_sketch::SketchDenoiser;

/// The sketch model, failing whenever its input holds a value larger than `limit` (as a real
/// model failing on out-of-range activations would): a channel gain of 3 on noise gets there.
struct Fragile {
    inner: SketchDenoiser,
    limit: f32,
    /// Fail every call while set.
    broken: Arc<AtomicBool>,
}

impl Denoiser for Fragile {
    fn latent_channels(&self) -> usize {
        self.inner.latent_channels()
    }
    fn context_channels(&self) -> usize {
        self.inner.context_channels()
    }
    fn device(&self) -> &candle_core::Device {
        self.inner.device()
    }
    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> demon_engine::Result<Tensor> {
        if self.broken.load(Ordering::Acquire) {
            return Err(EngineError::Backend("the model is broken".into()));
        }
        let peak = batch.x.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        if peak > self.limit {
            return Err(EngineError::Backend(format!(
                "input peak {peak:.1} over {}",
                self.limit
            )));
        }
        self.inner.velocity(batch)
    }
}

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

fn run(core: LiveCore, session_file: Option<std::path::PathBuf>) -> SessionHandle {
    start(
        core,
        RunOptions {
            realtime: false,
            session_file,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Notices (as text) seen within `wait`, until `done` accepts the list so far.
fn notices_until(
    sub: &demon_live::bus::Subscriber,
    wait: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    while Instant::now() < deadline && !done(&seen) {
        if let Ok(Some(Event::Notice { message })) = sub.recv_timeout(Duration::from_millis(50)) {
            seen.push(message);
        }
    }
    seen
}

#[test]
fn a_failing_tick_is_reported_once_and_the_control_behind_it_is_taken_back() {
    let fragile = Fragile {
        inner: SketchDenoiser::default(),
        limit: 8.0,
        broken: Arc::default(),
    };
    let handle = run(
        LiveCore::new(config(4.0), backend(Box::new(fragile))).unwrap(),
        None,
    );
    let sub = handle.subscribe();
    let t = Duration::from_secs(10);
    handle
        .control(0, ControlMessage::SetSlew { per_second: 1000.0 }, t)
        .unwrap();
    let gains: BTreeMap<String, f64> = (0..8).map(|i| (format!("ch_g{i}"), 3.0)).collect();
    handle
        .control(0, ControlMessage::SetKnobs { values: gains }, t)
        .unwrap();
    let notices = notices_until(&sub, Duration::from_secs(60), |n| {
        n.iter().any(|m| m.starts_with("ticks run again"))
    });
    let failed: Vec<_> = notices.iter().filter(|m| m.contains("failed: ")).collect();
    assert_eq!(failed.len(), 1, "reported once: {notices:?}");
    assert!(failed[0].contains("input peak"), "{}", failed[0]);
    assert!(
        notices
            .iter()
            .any(|m| m.starts_with("took back") && m.contains("ch_g0")),
        "the gain change was taken back: {notices:?}"
    );
    assert!(
        notices.iter().any(|m| m.starts_with("ticks run again")),
        "{notices:?}"
    );
    let st = handle.state().unwrap();
    assert_eq!(
        st.targets["ch_g0"], 1.0,
        "the gains are back where they were"
    );
    assert_eq!(handle.health().tick_error, None);
    let tick = st.tick;
    std::thread::sleep(Duration::from_millis(500));
    assert!(handle.state().unwrap().tick > tick, "ticks run");
    handle.stop().unwrap();
}

#[test]
fn failing_ticks_show_in_health_until_they_run_again() {
    // Every call fails while `broken`: nothing to take back, so the error stays (reported
    // once) and the runner keeps answering controls.
    let broken = Arc::new(AtomicBool::new(false));
    let fragile = Fragile {
        inner: SketchDenoiser::default(),
        limit: f32::INFINITY,
        broken: broken.clone(),
    };
    let handle = run(
        LiveCore::new(config(4.0), backend(Box::new(fragile))).unwrap(),
        None,
    );
    let sub = handle.subscribe();
    broken.store(true, Ordering::Release);
    let notices = notices_until(&sub, Duration::from_secs(2), |_| false);
    assert_eq!(
        notices.iter().filter(|m| m.contains("failed: ")).count(),
        1,
        "{notices:?}"
    );
    let h = handle.health();
    assert!(!h.ok());
    assert!(
        h.tick_error
            .as_deref()
            .is_some_and(|e| e.contains("broken")),
        "{h:?}"
    );
    assert!(
        handle
            .control(
                0,
                ControlMessage::SetKnob {
                    name: "guidance".into(),
                    value: 2.0
                },
                Duration::from_secs(5)
            )
            .is_ok(),
        "controls are still answered"
    );
    broken.store(false, Ordering::Release);
    let notices = notices_until(&sub, Duration::from_secs(30), |n| {
        n.iter().any(|m| m.starts_with("ticks run again"))
    });
    assert!(
        notices.iter().any(|m| m.starts_with("ticks run again")),
        "{notices:?}"
    );
    assert_eq!(handle.health().tick_error, None);
    handle.stop().unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_stops_the_session_file_not_the_session() {
    let core = LiveCore::new(config(4.0), backend(Box::new(SketchDenoiser::default()))).unwrap();
    let handle = run(core, Some("/dev/full".into()));
    // The header already fails: the recording stops at once, the session plays.
    let h = handle.health();
    assert!(h.ok(), "{h:?}");
    assert!(
        h.recording_error
            .as_deref()
            .is_some_and(|e| e.contains("/dev/full")),
        "{h:?}"
    );
    let tick = handle.state().unwrap().tick;
    std::thread::sleep(Duration::from_millis(500));
    assert!(handle.state().unwrap().tick > tick, "ticks run");
    assert!(
        handle
            .control(
                0,
                ControlMessage::SetKnob {
                    name: "guidance".into(),
                    value: 2.0
                },
                Duration::from_secs(5)
            )
            .is_ok()
    );
    handle.stop().expect("the session ends cleanly");
}

/// xorshift64*: a seeded stream for the soak.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random control the session must accept.
fn random_control(rng: &mut Rng) -> ControlMessage {
    let k = &KNOBS[rng.next() as usize % KNOBS.len()];
    let mut v = k.min + rng.unit() * (k.max - k.min);
    if k.integer {
        v = v.round();
    }
    match rng.next() % 10 {
        0 => ControlMessage::SetCurve {
            name: "x0_target_strength".into(),
            curve: rng
                .next()
                .is_multiple_of(2)
                .then(|| demon_engine::CurveSpec::Raw {
                    values: (0..8).map(|_| rng.unit() as f32).collect(),
                }),
        },
        1 => ControlMessage::SetKnob {
            name: "x0_target_strength".into(),
            value: rng.unit(),
        },
        2 => ControlMessage::SetPlaying {
            playing: !rng.next().is_multiple_of(4),
        },
        _ => ControlMessage::SetKnob {
            name: k.name.into(),
            value: v,
        },
    }
}

/// D4: random valid controls (x0_target_strength among them) applied between ticks; every tick
/// must succeed. `DEMON_SOAK_CONTROLS` raises the count (default 1 000).
#[test]
fn random_valid_controls_never_make_ticks_fail() {
    let n: usize = std::env::var("DEMON_SOAK_CONTROLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    let mut cfg = config(4.0);
    cfg.knobs.insert("steps".into(), 2.0);
    let mut core = LiveCore::new(cfg, backend(Box::new(SketchDenoiser::default()))).unwrap();
    let tone: Vec<f32> = (0..192_000)
        .map(|i| (i as f32 * 0.03).sin() * 0.3)
        .collect();
    core.apply(&ControlMessage::SetSource {
        source: demon_live::control::SourceSpec::Audio {
            name: "tone.wav".into(),
            channels: vec![tone.clone(), tone],
        },
    })
    .unwrap();
    let mut rng = Rng(0x5eed_d4d4);
    let mut applied = Vec::new();
    for i in 0..n {
        let c = random_control(&mut rng);
        if core.apply(&c).is_ok() {
            applied.push(c);
        }
        if i.is_multiple_of(4)
            && let Err(e) = core.tick(None)
        {
            let recent: Vec<_> = applied.iter().rev().take(8).collect();
            panic!("tick after control {i} failed: {e}; latest controls: {recent:?}");
        }
    }
    assert!(applied.len() > n / 2, "{} of {n} applied", applied.len());
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("demon-robust-{}-{name}", std::process::id()))
}

/// A session file from lines of JSON.
fn session_file(name: &str, lines: &[String]) -> std::path::PathBuf {
    let p = tmp(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn header(config: serde_json::Value) -> String {
    let mut c = serde_json::to_value(config_for_files()).unwrap();
    for (k, v) in config.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::json!({"type": "header", "version": 1, "config": c}).to_string()
}

fn config_for_files() -> SessionConfig {
    config(2.0)
}

fn clocks(n: u64) -> Vec<String> {
    (0..n)
        .map(|t| {
            serde_json::json!({"type": "clock", "tick": t, "playhead": t * 1920, "lead_frames": 12})
                .to_string()
        })
        .collect()
}

#[test]
fn a_recording_cut_short_replays_up_to_its_last_complete_line() {
    // What `kill -9` leaves: lines flushed as written, no end line. Read it while the session
    // still runs (the same bytes a killed server leaves behind).
    let rec = tmp("live.jsonl");
    let core = LiveCore::new(config(2.0), backend(Box::new(SketchDenoiser::default()))).unwrap();
    let handle = run(core, Some(rec.clone()));
    let t = Duration::from_secs(10);
    handle
        .control(
            0,
            ControlMessage::SetKnob {
                name: "guidance".into(),
                value: 2.0,
            },
            t,
        )
        .unwrap();
    while handle.state().unwrap().tick < 30 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let file = demon_live::record::read_session(&rec).unwrap();
    assert!(file.ticks >= 30, "{}", file.ticks);
    assert!(
        file.warnings.iter().any(|w| w.contains("no end line")),
        "{:?}",
        file.warnings
    );
    assert_eq!(file.events.len(), 1);
    let out = tmp("cut.wav");
    let summary =
        demon_live::perform::replay(&file, backend(Box::new(SketchDenoiser::default())), &out)
            .unwrap();
    assert_eq!(summary.ticks, file.ticks);
    handle.stop().unwrap();
    // A last line cut mid-write is ignored with a warning.
    let mut lines = vec![header(serde_json::json!({}))];
    lines.extend(clocks(5));
    let p = session_file("midline.jsonl", &lines);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"type":"event","tick":3,"message":{"type":"set_kn"#)
            .unwrap();
    }
    let f = demon_live::record::read_session(&p).unwrap();
    assert_eq!(f.ticks, 5);
    assert!(
        f.warnings.iter().any(|w| w.contains("cut short mid-line")),
        "{:?}",
        f.warnings
    );
    for p in [rec, out, p] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn session_headers_are_checked_and_bad_events_reported() {
    let read = |name: &str, lines: &[String]| {
        let p = session_file(name, lines);
        let t0 = Instant::now();
        let r = demon_live::record::read_session(&p);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{name} read in under 1 s"
        );
        let _ = std::fs::remove_file(p);
        r
    };
    let end = |t: u64| serde_json::json!({"type": "end", "ticks": t}).to_string();
    // end.ticks beyond the recorded clock, and 0.
    for (name, ticks) in [("huge", 1_000_000_000_000u64), ("zero", 0)] {
        let mut lines = vec![header(serde_json::json!({}))];
        lines.extend(clocks(10));
        lines.push(end(ticks));
        let e = read(name, &lines).unwrap_err().to_string();
        assert!(
            e.contains("end.ticks") && e.contains("outside 1..=10"),
            "{e}"
        );
    }
    for (field, value, says) in [
        ("samples_per_tick", serde_json::json!(1), "samples_per_tick"),
        ("keep_seconds", serde_json::json!(0.0), "keep_seconds"),
        ("window_seconds", serde_json::json!(-1.0), "window_seconds"),
        (
            "slew_per_second",
            serde_json::json!(-1.0),
            "slew_per_second",
        ),
    ] {
        let mut lines = vec![header(serde_json::json!({ field: value }))];
        lines.extend(clocks(2));
        lines.push(end(2));
        let e = read(field, &lines).unwrap_err().to_string();
        assert!(e.contains(says), "{field}: {e}");
    }
    let mut lines = vec![header(serde_json::json!({}))];
    lines.extend(clocks(2));
    lines[1] = serde_json::json!({"type": "clock", "tick": 0, "playhead": 0, "lead_frames": 4294967295u64}).to_string();
    lines.push(end(2));
    assert!(
        read("lead", &lines)
            .unwrap_err()
            .to_string()
            .contains("lead_frames")
    );
    // Events that cannot be applied are dropped, each named.
    let ev = |tick: u64, m: serde_json::Value| {
        serde_json::json!({"type": "event", "tick": tick, "message": m}).to_string()
    };
    let mut lines = vec![header(serde_json::json!({}))];
    lines.push(ev(
        0,
        serde_json::json!({"type": "set_knob", "name": "wobble", "value": 1.0}),
    ));
    lines.push(ev(
        0,
        serde_json::json!({"type": "set_knob", "name": "guidance", "value": 1e308}),
    ));
    lines.push(ev(
        1,
        serde_json::json!({"type": "set_prompt", "prompt": "x".repeat(50 << 20)}),
    ));
    lines.push(ev(
        1,
        serde_json::json!({"type": "set_knob", "name": "guidance", "value": 2.0}),
    ));
    lines.extend(clocks(3));
    lines.push(ev(
        u64::MAX,
        serde_json::json!({"type": "set_playing", "playing": false}),
    ));
    lines.push(end(3));
    // (the clock lines come after the events here; order between kinds is free)
    let f = read("events", &lines).unwrap();
    assert_eq!(
        f.events.len(),
        1,
        "only the good event is kept: {:?}",
        f.events
    );
    assert_eq!(f.warnings.len(), 4, "{:?}", f.warnings);
    for want in [
        "wobble",
        "knob `guidance`",
        "52428800 characters",
        "18446744073709551615",
    ] {
        assert!(
            f.warnings.iter().any(|w| w.contains(want)),
            "{want}: {:?}",
            f.warnings
        );
    }
}

/// Holds the runner inside a tick (in `play`) while `closed` is set, so a test can queue
/// controls that all meet at the same tick boundary.
struct Gate {
    closed: Arc<AtomicBool>,
    holding: Arc<AtomicBool>,
}

impl demon_live::sink::AudioSink for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn play(&mut self, _block: &[Vec<f32>; 2]) -> demon_live::SessionResult<()> {
        while self.closed.load(Ordering::Acquire) {
            self.holding.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(1));
        }
        self.holding.store(false, Ordering::Release);
        Ok(())
    }
}

/// Issue 15, controls never queue: 100 values for one knob (and a refused one among them)
/// queued while the runner is inside one tick meet at the next boundary, where only the last is
/// applied, echoed and recorded; every one is answered, the valid ones with that tick. The
/// recorded session replays to the same bytes as the live audio.
#[test]
fn knob_sets_between_two_ticks_coalesce_to_the_last_and_replay_identically() {
    let (rec, live, replayed) = (
        tmp("coalesce.jsonl"),
        tmp("coalesce-live.wav"),
        tmp("coalesce-replay.wav"),
    );
    let closed = Arc::new(AtomicBool::new(false));
    let holding = Arc::new(AtomicBool::new(false));
    let core = LiveCore::new(config(2.0), backend(Box::new(SketchDenoiser::default()))).unwrap();
    let sr = core.sample_rate();
    let handle = start(
        core,
        RunOptions {
            realtime: false,
            session_file: Some(rec.clone()),
            sinks: vec![
                Box::new(Gate {
                    closed: closed.clone(),
                    holding: holding.clone(),
                }),
                Box::new(demon_live::sink::WavRecorder::create(&live, sr, false).unwrap()),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    let sub = handle.subscribe();
    while handle.state().unwrap().tick < 10 {
        std::thread::sleep(Duration::from_millis(5));
    }
    closed.store(true, Ordering::Release);
    while !holding.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let values: Vec<f64> = (0..100).map(|i| 1.0 + i as f64 * 0.02).collect();
    let set = |name: &str, value: f64| ControlMessage::SetKnob {
        name: name.into(),
        value,
    };
    let mut replies = Vec::new();
    for (i, v) in values.iter().enumerate() {
        replies.push(handle.queue_control(7, set("guidance", *v)).unwrap());
        if i == 50 {
            replies.push(handle.queue_control(7, set("guidance", 1e308)).unwrap());
            replies.push(handle.queue_control(7, set("denoise", 0.4)).unwrap());
        }
    }
    closed.store(false, Ordering::Release);
    let answers: Vec<_> = replies
        .into_iter()
        .map(|r| r.wait(Duration::from_secs(30)))
        .collect();
    assert_eq!(answers.len(), 102);
    let refused: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert_eq!(refused.len(), 1, "only 1e308 is refused: {refused:?}");
    assert!(
        refused[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("guidance"),
        "{refused:?}"
    );
    let ticks: std::collections::BTreeSet<u64> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .copied()
        .collect();
    assert_eq!(
        ticks.len(),
        1,
        "every valid value answered at one tick: {ticks:?}"
    );
    let tick = *ticks.iter().next().unwrap();
    let last = *values.last().unwrap();
    assert_eq!(handle.state().unwrap().targets["guidance"], last);
    assert_eq!(handle.state().unwrap().targets["denoise"], 0.4);

    // One echo per knob at that tick, carrying the winning value.
    let mut echoes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && echoes.len() < 2 {
        if let Ok(Some(Event::Applied {
            tick: t, message, ..
        })) = sub.recv_timeout(Duration::from_millis(50))
            && t == tick
        {
            echoes.push(message);
        }
    }
    assert_eq!(echoes, vec![set("denoise", 0.4), set("guidance", last)]);

    // Let the new values play a while, then stop and compare with the replay.
    while handle.state().unwrap().tick < tick + 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.stop().unwrap();
    let file = demon_live::record::read_session(&rec).unwrap();
    let at_tick: Vec<_> = file
        .events
        .iter()
        .filter(|(t, _)| *t == tick)
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(at_tick, vec![set("denoise", 0.4), set("guidance", last)]);
    assert_eq!(file.events.len(), 2, "nothing else was recorded");
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
    assert!(a.len() > 44 + 30 * 1920 * 4, "{} bytes", a.len());
    assert!(a == b, "live and replay differ");
    for p in [rec, live, replayed] {
        let _ = std::fs::remove_file(p);
    }
}

/// A control that waited longer than the bound for a tick boundary is refused, not applied.
#[test]
fn a_control_that_waited_too_long_is_refused_not_applied_late() {
    let closed = Arc::new(AtomicBool::new(false));
    let holding = Arc::new(AtomicBool::new(false));
    let core = LiveCore::new(config(2.0), backend(Box::new(SketchDenoiser::default()))).unwrap();
    let handle = start(
        core,
        RunOptions {
            realtime: false,
            sinks: vec![Box::new(Gate {
                closed: closed.clone(),
                holding: holding.clone(),
            })],
            ..Default::default()
        },
    )
    .unwrap();
    while handle.state().unwrap().tick < 5 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = handle.state().unwrap().targets["guidance"];
    closed.store(true, Ordering::Release);
    while !holding.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let late = handle
        .queue_control(
            1,
            ControlMessage::SetKnob {
                name: "guidance".into(),
                value: before + 1.0,
            },
        )
        .unwrap();
    std::thread::sleep(demon_live::session::CONTROL_MAX_WAIT + Duration::from_millis(300));
    closed.store(false, Ordering::Release);
    let e = late.wait(Duration::from_secs(10)).unwrap_err();
    assert_eq!(e.code(), "timeout", "{e}");
    assert!(e.to_string().contains("was not applied"), "{e}");
    assert_eq!(handle.state().unwrap().targets["guidance"], before);
    // A fresh control still applies.
    let tick = handle
        .control(
            1,
            ControlMessage::SetKnob {
                name: "guidance".into(),
                value: before + 0.5,
            },
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(tick > 5);
    assert_eq!(handle.state().unwrap().targets["guidance"], before + 0.5);
    handle.stop().unwrap();
}
