//! The live session on the sketch backend: ticks, windowed decode, controls applied only
//! between ticks, bad input, backpressure, record and exact replay.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use candle_core::Tensor;
use demon_engine::{BackendSet, CurveSpec, DenoiseBatch, Denoiser};
use demon_live::control::{ControlMessage, SourceSpec};
use demon_live::core::{LiveCore, SessionConfig, SessionProbe, latent_spec};
use demon_live::record::{ScriptEvent, read_session};
use demon_live::session::{RunOptions, start};
use demon_sketch::SketchDenoiser;

fn sketch_with(denoiser: Box<dyn Denoiser>) -> BackendSet {
    demon_sketch::backend_with(denoiser)
}

fn sketch() -> BackendSet {
    sketch_with(Box::new(SketchDenoiser::default()))
}

fn config(seconds: f64) -> SessionConfig {
    SessionConfig {
        song_seconds: seconds,
        prompt: "house, 124 bpm".into(),
        ..Default::default()
    }
}

fn library_source(style: &str, frames: usize) -> SourceSpec {
    let song = demon_sketch::composer::compose(demon_sketch::composer::SongSpec {
        style: demon_sketch::Style::from_index(
            demon_sketch::style::read_prompt(style)
                .style_weights
                .iter()
                .enumerate()
                .fold((0, 0.0), |a, (i, w)| if *w > a.1 { (i, *w) } else { a })
                .0,
        )
        .unwrap(),
        bpm: 124.0,
        tonic: 9,
        minor: true,
        seed: 3,
        frames,
    });
    let t = Tensor::from_vec(song.latent, (1, frames, 64), &candle_core::Device::Cpu).unwrap();
    latent_spec(&format!("library:{style}"), &t).unwrap()
}

#[test]
fn ticks_generate_and_play() {
    let mut core = LiveCore::new(config(8.0), sketch()).unwrap();
    let field = core.receptive_field();
    assert!(field.before >= 10 && field.after >= 1, "{field:?}");
    let mut played = Vec::new();
    let mut replaced = false;
    let mut patches = 0;
    for _ in 0..40 {
        let out = core.tick(None).unwrap();
        replaced |= out.replaced;
        patches += out.patches.len();
        assert_eq!(out.played_samples, core.played()[0].len());
        played.extend_from_slice(&core.played()[0]);
    }
    assert!(replaced, "the first generation fills the loop");
    assert!(
        patches > 0,
        "later generations patch windows near the playhead"
    );
    assert_eq!(played.len(), 40 * 1920);
    let rms = (played.iter().map(|x| x * x).sum::<f32>() / played.len() as f32).sqrt();
    assert!(rms > 0.02, "the loop plays music (rms {rms})");
    assert!(core.generations() >= 10);
}

#[test]
fn windowed_patches_equal_the_full_decode_of_the_latent() {
    // With a fixed seed and no changes every generation is the same latent, so once the loop
    // is filled, every patched window must equal the full decode at those samples.
    let mut cfg = config(6.0);
    cfg.source = library_source("techno", 150);
    cfg.knobs.insert("denoise".into(), 0.5);
    let mut core = LiveCore::new(cfg, sketch()).unwrap();
    let field = core.receptive_field();
    let mut last = None;
    let mut checked = 0;
    for _ in 0..120 {
        let out = core.tick(None).unwrap();
        for (start, audio) in &out.patches {
            if let Some(full) = &last {
                let full: &demon_engine::Audio = full;
                let s = *start as usize;
                if s / 1920 < field.before {
                    continue; // context wraps around the loop: the full decode has none there
                }
                // Inside the crossfades at both edges the loop blends with what it held.
                let xf = demon_live::loopbuf::CROSSFADE_SAMPLES.min(audio[0].len() / 4);
                for (ch, a) in audio.iter().enumerate() {
                    let inner = &a[xf..a.len() - xf];
                    let d = inner
                        .iter()
                        .zip(&full.channels[ch][s + xf..s + a.len() - xf])
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                    assert!(d <= 1e-5, "window at {s}: max diff {d}");
                }
                checked += 1;
            }
        }
        if core.generations() >= 2 {
            last = core.latest_audio();
        }
    }
    assert!(checked > 5, "windows checked: {checked}");
}

struct ProbeDenoiser {
    inner: SketchDenoiser,
    probe: Arc<SessionProbe>,
    seen: Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
}

impl Denoiser for ProbeDenoiser {
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
        let before = (
            self.probe.tick.load(Ordering::Acquire),
            self.probe.control_version.load(Ordering::Acquire),
        );
        let v = self.inner.velocity(batch)?;
        std::thread::sleep(Duration::from_micros(300)); // widen the window for a race
        let after = self.probe.control_version.load(Ordering::Acquire);
        assert_eq!(before.1, after, "a control was applied during a model call");
        self.seen.lock().unwrap().push(before);
        Ok(v)
    }
}

#[test]
fn no_control_is_ever_applied_mid_step() {
    let probe = Arc::new(SessionProbe::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let den = ProbeDenoiser {
        inner: SketchDenoiser::default(),
        probe: probe.clone(),
        seen: seen.clone(),
    };
    let mut cfg = config(4.0);
    cfg.knobs.insert("guidance".into(), 3.0); // two calls per tick: positive and negative
    cfg.cfg_mode = demon_engine::CfgMode::Full;
    let mut core = LiveCore::new(cfg, sketch_with(Box::new(den))).unwrap();
    core.probe = probe.clone();
    let handle = start(
        core,
        RunOptions {
            realtime: false,
            max_ticks: Some(60),
            ..Default::default()
        },
    )
    .unwrap();
    let flood = {
        let h = handle.clone();
        std::thread::spawn(move || {
            for i in 0..400 {
                let v = 0.5 + 0.4 * ((i % 10) as f64 / 10.0);
                let _ = h.send(
                    1,
                    ControlMessage::SetKnob {
                        name: "velocity_scale".into(),
                        value: v,
                    },
                );
                let _ = h.send(
                    1,
                    ControlMessage::SetKnob {
                        name: "denoise".into(),
                        value: v,
                    },
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let summary = handle.join().unwrap();
    flood.join().unwrap();
    assert_eq!(summary.ticks, 60);
    let seen = seen.lock().unwrap();
    // Group the calls by tick: every call of a tick saw the same control snapshot.
    let mut by_tick: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for (tick, version) in seen.iter() {
        by_tick.entry(*tick).or_default().push(*version);
    }
    let multi = by_tick.values().filter(|v| v.len() > 1).count();
    assert!(multi > 20, "ticks with several model calls: {multi}");
    for (tick, versions) in by_tick {
        assert!(
            versions.windows(2).all(|w| w[0] == w[1]),
            "tick {tick} saw versions {versions:?}"
        );
    }
    assert!(
        probe.control_version.load(Ordering::Acquire) > 10,
        "controls were applied between ticks"
    );
}

#[test]
fn bad_controls_are_rejected_and_the_session_keeps_playing() {
    let mut core = LiveCore::new(config(4.0), sketch()).unwrap();
    for _ in 0..12 {
        core.tick(None).unwrap();
    }
    let before = core.state();
    let bad = vec![
        (
            ControlMessage::SetKnob {
                name: "wobble".into(),
                value: 1.0,
            },
            "unknown knob",
            "unknown_knob",
        ),
        (
            ControlMessage::SetKnob {
                name: "denoise".into(),
                value: f64::NAN,
            },
            "not a finite",
            "bad_value",
        ),
        (
            ControlMessage::SetKnob {
                name: "depth".into(),
                value: 9.0,
            },
            "outside",
            "bad_value",
        ),
        (
            ControlMessage::SetKnob {
                name: "steps".into(),
                value: 0.0,
            },
            "outside",
            "bad_value",
        ),
        (
            ControlMessage::SetKnob {
                name: "lora:polka".into(),
                value: 1.0,
            },
            "no LoRA adapter",
            "not_found",
        ),
        (
            ControlMessage::SetCurve {
                name: "velocity_scale".into(),
                curve: Some(CurveSpec::Raw {
                    values: vec![1.0, f32::NAN],
                }),
            },
            "not finite",
            "bad_value",
        ),
        (
            ControlMessage::SetCurve {
                name: "sde_denoise".into(),
                curve: Some(CurveSpec::Constant { value: 5.0 }),
            },
            "sde_denoise",
            "bad_value",
        ),
        (
            ControlMessage::SetCurve {
                name: "wobble".into(),
                curve: None,
            },
            "not a curve",
            "unknown_curve",
        ),
        (
            ControlMessage::SetPrompt {
                prompt: None,
                prompt_b: None,
                negative: None,
                bpm: Some(1.0e6),
                key: None,
                lyrics: None,
                time_signature: None,
                language: None,
                task: None,
            },
            "bpm",
            "bad_value",
        ),
        (
            ControlMessage::SetPrompt {
                prompt: None,
                prompt_b: None,
                negative: None,
                bpm: None,
                key: Some("Q minor".into()),
                lyrics: None,
                time_signature: None,
                language: None,
                task: None,
            },
            "key",
            "bad_value",
        ),
        (
            ControlMessage::SetSource {
                source: SourceSpec::Latent {
                    name: "x".into(),
                    frames: 10,
                    channels: 3,
                    data_b64: String::new(),
                },
            },
            "latent channels",
            "bad_source",
        ),
        (
            ControlMessage::SetSource {
                source: SourceSpec::Latent {
                    name: "x".into(),
                    frames: 2,
                    channels: 64,
                    data_b64: "@@@@".into(),
                },
            },
            "base64",
            "bad_source",
        ),
        (
            ControlMessage::SetSource {
                source: SourceSpec::Audio {
                    name: "empty.wav".into(),
                    channels: vec![vec![], vec![]],
                },
            },
            "shorter than one latent frame",
            "bad_source",
        ),
        (
            ControlMessage::SetSource {
                source: SourceSpec::File {
                    path: "x.wav".into(),
                },
            },
            "resolved by the front end",
            "bad_source",
        ),
        (
            ControlMessage::SetLoopBand {
                start_s: 3.0,
                end_s: 1.0,
            },
            "empty",
            "bad_value",
        ),
        (ControlMessage::Seek { seconds: 1e9 }, "beyond", "bad_value"),
        (
            ControlMessage::SetSlew { per_second: -1.0 },
            "slew",
            "bad_value",
        ),
    ];
    for (m, needle, code) in bad {
        let e = core.apply(&m).expect_err(&format!("{m:?} was accepted"));
        assert!(
            e.to_string().contains(needle),
            "`{e}` should mention `{needle}`"
        );
        assert_eq!(e.code(), code, "{e}");
    }
    let after = core.state();
    assert_eq!(before.knobs, after.knobs);
    assert_eq!(before.prompt, after.prompt);
    assert_eq!(before.key, after.key);
    assert_eq!(before.source, after.source);
    assert_eq!(before.depth, after.depth);
    // Still playing, still generating.
    let g = core.generations();
    for _ in 0..10 {
        assert_eq!(core.tick(None).unwrap().played_samples, 1920);
        assert_eq!(core.played()[0].len(), 1920);
    }
    assert!(core.generations() > g);
}

#[test]
/// What this checks: a subscriber that never reads neither stops nor blocks the runner (every
/// tick runs to the end, unpaced) and loses audio instead, while a live reader gets every tick's
/// events. It measures no speed (that would be a timed test); tick cost is measured by
/// `demon bench`.
fn a_stalled_subscriber_loses_audio_while_every_tick_runs() {
    let core = LiveCore::new(config(4.0), sketch()).unwrap();
    let handle = start(
        core,
        RunOptions {
            realtime: false,
            max_ticks: Some(80),
            bus_capacity: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let stalled = handle.subscribe();
    let reader = handle.subscribe();
    let t = std::thread::spawn(move || {
        let mut n = 0;
        while let Ok(e) = reader.recv_timeout(Duration::from_millis(200)) {
            n += e.is_some() as usize;
        }
        n
    });
    let summary = handle.join().unwrap();
    assert_eq!(summary.ticks, 80, "every tick ran");
    assert!(
        stalled.dropped() > 0,
        "the stalled subscriber lost audio, the runner did not wait"
    );
    assert!(
        t.join().unwrap() > 80,
        "the live reader got every tick's events"
    );
}

fn performance_script() -> Vec<ScriptEvent> {
    use ControlMessage::*;
    let mut s = Vec::new();
    let mut at = 0.2;
    let mut push = |m: ControlMessage| {
        s.push(ScriptEvent { at, message: m });
        at += 0.11;
    };
    for i in 0..6 {
        push(SetKnob {
            name: "velocity_scale".into(),
            value: 0.6 + 0.1 * i as f64,
        });
        push(SetKnob {
            name: "denoise".into(),
            value: 0.4 + 0.1 * i as f64,
        });
    }
    push(SetCurve {
        name: "ode_noise".into(),
        curve: Some(CurveSpec::Sine {
            min: 0.0,
            max: 0.5,
            cycles: 2.0,
            phase: 0.0,
        }),
    });
    push(SetKnob {
        name: "seed".into(),
        value: 7.0,
    });
    push(SetKnob {
        name: "depth".into(),
        value: 2.0,
    });
    push(SetKnob {
        name: "steps".into(),
        value: 6.0,
    });
    push(SetPrompt {
        prompt: Some("techno".into()),
        prompt_b: Some("ambient".into()),
        negative: Some("hip hop".into()),
        bpm: None,
        key: None,
        lyrics: None,
        time_signature: None,
        language: None,
        task: None,
    });
    push(SetKnob {
        name: "blend".into(),
        value: 0.5,
    });
    push(SetKnob {
        name: "guidance".into(),
        value: 2.5,
    });
    push(SetSolver {
        solver: demon_engine::SolverKind::Sde,
    });
    push(SetKnob {
        name: "sde_denoise".into(),
        value: 0.8,
    });
    push(SetKnob {
        name: "feedback".into(),
        value: 0.3,
    });
    push(SetKnob {
        name: "structure".into(),
        value: 0.4,
    });
    push(SetKnob {
        name: "timbre".into(),
        value: 0.5,
    });
    push(SetKnob {
        name: "ch_g3".into(),
        value: 1.5,
    });
    push(SetDcw {
        enabled: Some(true),
        mode: Some(demon_engine::DcwMode::Low),
        wavelet: Some(demon_engine::Wavelet::Db4),
    });
    push(SetLoopBand {
        start_s: 1.0,
        end_s: 3.0,
    });
    push(Seek { seconds: 1.5 });
    push(ClearLoopBand);
    push(SetSlew { per_second: 1.0 });
    push(SetKnob {
        name: "shift".into(),
        value: 3.5,
    });
    push(SetCfgMode {
        mode: demon_engine::CfgMode::SelfNoise,
    });
    push(SetKnob {
        name: "x0_target_strength".into(),
        value: 0.3,
    });
    push(SetKnob {
        name: "cfg_rescale".into(),
        value: 0.2,
    });
    push(SetKnob {
        name: "apg_momentum".into(),
        value: -0.5,
    });
    push(SetKnob {
        name: "ode_noise".into(),
        value: 0.2,
    });
    push(SetCurve {
        name: "blend".into(),
        curve: Some(CurveSpec::Ramp {
            start: 0.0,
            end: 1.0,
        }),
    });
    push(SetKnob {
        name: "depth".into(),
        value: 4.0,
    });
    push(SetSource {
        source: library_source("funk", 100),
    });
    push(SetKnob {
        name: "denoise".into(),
        value: 0.6,
    });
    push(SetPlaying { playing: false });
    push(SetPlaying { playing: true });
    push(SetKnob {
        name: "wobble".into(),
        value: 1.0,
    }); // rejected, not recorded
    s
}

#[test]
fn a_recorded_performance_replays_byte_identically() {
    let dir = std::env::temp_dir().join(format!("demon-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (session, live, replayed) = (
        dir.join("s.jsonl"),
        dir.join("live.wav"),
        dir.join("replay.wav"),
    );
    let script = performance_script();
    let mut cfg = config(4.0);
    cfg.source = library_source("house", 100);
    let summary = demon_live::perform::perform(
        cfg,
        sketch(),
        &script,
        6.0,
        Some(&session),
        Some(&live),
        false,
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(summary.ticks, 150);
    let file = read_session(&session).unwrap();
    assert!(
        file.events.len() >= 35,
        "events recorded: {}",
        file.events.len()
    );
    assert_eq!(file.ticks, 150);
    demon_live::perform::replay(&file, sketch(), &replayed).unwrap();
    let (a, b) = (
        std::fs::read(&live).unwrap(),
        std::fs::read(&replayed).unwrap(),
    );
    // 150 ticks, minus the few the script paused playback for.
    assert!(a.len() > 44 + 140 * 1920 * 4, "{} bytes", a.len());
    assert!(a == b, "live and replay differ");
}

#[test]
fn shortening_the_song_with_feedback_on_keeps_the_session_running() {
    let mut core = LiveCore::new(config(8.0), sketch()).unwrap();
    core.apply(&ControlMessage::SetKnob {
        name: "feedback".into(),
        value: 0.5,
    })
    .unwrap();
    for _ in 0..20 {
        core.tick(None).unwrap();
    }
    // A 1.5 s source while generations of the 8 s song are still in flight.
    let tone: Vec<f32> = (0..72_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
    core.apply(&ControlMessage::SetSource {
        source: SourceSpec::Audio {
            name: "tone.wav".into(),
            channels: vec![tone.clone(), tone],
        },
    })
    .unwrap();
    let g = core.generations();
    for _ in 0..40 {
        core.tick(None)
            .expect("ticks keep working after the length change");
    }
    assert!(core.generations() > g);
    assert_eq!(core.song_frames(), 37);
}

#[test]
fn slices_are_what_the_loop_holds() {
    let mut cfg = config(6.0);
    cfg.source = library_source("funk", 150);
    let mut core = LiveCore::new(cfg, sketch()).unwrap();
    let mut n = 0;
    for i in 0..80 {
        if i == 40 {
            core.apply(&ControlMessage::SetKnob {
                name: "velocity_scale".into(),
                value: 2.0,
            })
            .unwrap();
        }
        let out = core.tick(None).unwrap();
        let len = core.buffer().len();
        for (start, audio) in &out.patches {
            for (c, ch) in audio.iter().enumerate() {
                for (k, v) in ch.iter().enumerate() {
                    assert_eq!(*v, core.buffer().sample(c, (*start as usize + k) % len));
                }
            }
            n += 1;
        }
    }
    assert!(n > 10);
}
