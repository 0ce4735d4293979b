//! Issue 9 item 8: the real-time sections never allocate (debug builds, `assert_no_alloc` as
//! the global allocator, nih-plug's `assert_process_allocs` approach).
//!
//! A live session on the sketch backend runs 200 ticks while its controls move (a knob sweep,
//! curves drawn and removed, the prompt changed, play and pause); after each tick the played
//! block goes to the null sink, the WAV recorder and the device ring, and the device's callback
//! body drains the ring, all inside real-time sections, as the runner and the sound card do.
//! The tick's own real-time part (reading the played block from the loop) is guarded inside
//! `LiveCore::tick`. The model forward, the decode and the request building allocate candle
//! tensors by design and are not guarded (see `demon_live::rt`).

#![cfg(debug_assertions)]

use demon_engine::{BackendSet, CurveSpec, ReceptiveField};
use demon_live::control::ControlMessage;
use demon_live::core::{LiveCore, SessionConfig};
use demon_live::rt;
use demon_live::sink::{AudioSink, NullSink, WavRecorder, fill_output, queue_block};

#[global_allocator]
static ALLOC: rt::AllocDisabler = rt::AllocDisabler;

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

/// The check is live in this binary: an allocation inside a real-time section is counted, one
/// inside `permit_alloc` is not.
#[test]
fn an_allocation_in_a_real_time_section_is_counted() {
    rt::reset_violations();
    rt::no_alloc(|| {
        // Allocated and freed inside the permit (a value carried out would be freed outside).
        rt::permit_alloc(|| drop(std::hint::black_box(vec![0u8; 64])));
    });
    assert_eq!(rt::violations(), 0);
    rt::no_alloc(|| std::hint::black_box(vec![0u8; 64]).len());
    assert!(rt::violations() >= 1, "the allocator does not check");
    rt::reset_violations();
}

#[test]
fn two_hundred_ticks_with_moving_controls_never_allocate_in_real_time_sections() {
    let cfg = SessionConfig {
        song_seconds: 4.0,
        prompt: "house".into(),
        receptive_field: Some(ReceptiveField {
            before: demon_sketch::synth::DESIGN_MARGIN_BEFORE,
            after: demon_sketch::synth::DESIGN_MARGIN_AFTER,
        }),
        ..Default::default()
    };
    let mut core = LiveCore::new(cfg, sketch()).expect("live core");
    let dir = std::env::temp_dir().join(format!("demon-no-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let wav = dir.join("played.wav");
    let mut sinks: Vec<Box<dyn AudioSink>> = vec![
        Box::new(NullSink::default()),
        Box::new(WavRecorder::create(&wav, core.sample_rate(), false).expect("recorder")),
    ];
    // The device sink's ring and callback, without a device: one second of interleaved stereo.
    let (mut producer, mut consumer) = rtrb::RingBuffer::<f32>::new(2 * 48_000);
    let mut device_buffer = vec![0.0f32; 2 * 512];

    rt::reset_violations();
    let (mut played, mut generated) = (0usize, 0usize);
    for tick in 0..200u32 {
        let moves = match tick % 10 {
            0 => vec![ControlMessage::SetKnob {
                name: "denoise".into(),
                value: 0.3 + 0.6 * ((tick as f64) / 200.0),
            }],
            3 => vec![ControlMessage::SetKnobs {
                values: [
                    ("velocity_scale".to_string(), 0.8 + (tick % 7) as f64 * 0.1),
                    ("ch_g2".to_string(), 1.0 + (tick % 5) as f64 * 0.2),
                ]
                .into(),
            }],
            5 => vec![ControlMessage::SetCurve {
                name: "ode_noise".into(),
                curve: (tick % 20 == 5).then_some(CurveSpec::Ramp {
                    start: 0.0,
                    end: 0.2,
                }),
            }],
            7 if tick % 40 == 7 => vec![ControlMessage::SetPrompt {
                prompt: Some(if tick % 80 == 7 { "techno" } else { "house" }.into()),
                prompt_b: None,
                negative: None,
                bpm: None,
                key: None,
                lyrics: None,
                time_signature: None,
                language: None,
                task: None,
            }],
            9 => vec![ControlMessage::SetPlaying {
                playing: tick % 50 != 49,
            }],
            _ => Vec::new(),
        };
        for m in &moves {
            core.apply(m).expect("control");
        }
        let out = core.tick(None).expect("tick");
        generated += out.finished;
        if out.played_samples == 0 {
            continue;
        }
        played += out.played_samples;
        let block = core.played();
        rt::no_alloc(|| {
            for s in sinks.iter_mut() {
                s.play(block).expect("sink");
            }
            let queued = queue_block(&mut producer, block, 0);
            assert_eq!(queued, block[0].len(), "the ring has room");
            while consumer.slots() > 0 {
                fill_output(&mut consumer, &mut device_buffer);
            }
        });
    }
    let violations = rt::violations();
    for s in sinks.iter_mut() {
        s.finish().expect("finish");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(generated > 0, "the session generated");
    // Paused from ticks 49, 99, 149 (ten ticks each, until the next SetPlaying) and 199.
    assert_eq!(played, (200 - 31) * 1920, "samples played");
    assert_eq!(
        violations, 0,
        "allocations inside real-time sections over 200 ticks"
    );
}
