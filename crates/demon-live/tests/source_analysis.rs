//! Issue 12, items 4, 5 and 6: every loaded source is analysed (tempo, key, duration,
//! loudness), its measured tempo and key fill what prompt A leaves open, a prompt that names no
//! task is conditioned for a cover while a source plays (both change what is submitted, not
//! only what the state reports), and the loudness matcher takes what plays to its target.

use candle_core::Tensor;
use demon_engine::{BackendSet, GenerationTask};
use demon_live::control::{ControlMessage, SourceSpec};
use demon_live::core::{LiveCore, SessionConfig, latent_spec};
use demon_live::preset::PromptTask;

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

/// A composed funk song at 100 BPM as a latent source (its tempo is known).
fn song_at_100_bpm(frames: usize) -> SourceSpec {
    let song = demon_sketch::composer::compose(demon_sketch::composer::SongSpec {
        style: demon_sketch::Style::Funk,
        bpm: 100.0,
        tonic: 2,
        minor: false,
        seed: 3,
        frames,
    });
    let t = Tensor::from_vec(song.latent, (1, frames, 64), &candle_core::Device::Cpu).unwrap();
    latent_spec("funk-100", &t).unwrap()
}

fn core(prompt: &str, source: SourceSpec) -> LiveCore {
    let cfg = SessionConfig {
        song_seconds: 12.0,
        prompt: prompt.into(),
        source,
        ..Default::default()
    };
    LiveCore::new(cfg, sketch()).unwrap()
}

fn prompt(p: &str) -> ControlMessage {
    prompt_at(p, None)
}

fn prompt_at(p: &str, bpm: Option<f32>) -> ControlMessage {
    ControlMessage::SetPrompt {
        prompt: Some(p.into()),
        prompt_b: None,
        negative: None,
        bpm,
        key: None,
        lyrics: None,
        time_signature: None,
        language: None,
        task: None,
    }
}

fn conditioning(core: &mut LiveCore) -> Vec<u32> {
    let (r, _) = core.next_request().unwrap();
    let v: Vec<f32> = r.conditions[0]
        .conditioning
        .states
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

#[test]
fn the_measured_tempo_fills_the_prompt_only_where_it_names_none() {
    let mut core = core("house", song_at_100_bpm(300));
    let st = core.state();
    let a = st.source_analysis.clone().expect("the source was analysed");
    let bpm = a.bpm.expect("a tempo");
    assert!((bpm - 100.0).abs() < 1.0, "measured {bpm} BPM");
    assert!((a.duration_seconds - 12.0).abs() < 0.05, "{a:?}");
    assert!(a.integrated_lufs.is_some_and(f64::is_finite), "{a:?}");
    // "house" names no tempo: the measured one plays (house alone would be 124).
    let used = st.used.expect("the sketch reports what it uses");
    assert_eq!(used.prompt.bpm, Some(bpm.round() as f32));
    let hinted = conditioning(&mut core);

    // The prompt's own words win over the measurement...
    core.apply(&prompt("house, 124 bpm")).unwrap();
    assert_eq!(core.state().used.unwrap().prompt.bpm, Some(124.0));
    let worded = conditioning(&mut core);
    assert_ne!(hinted, worded, "the hint changes the conditioning");
    // ...and the bpm field wins over both.
    core.apply(&prompt_at("house, 124 bpm", Some(90.0)))
        .unwrap();
    assert_eq!(core.state().used.unwrap().prompt.bpm, Some(90.0));

    // Without a source there is nothing measured and nothing hinted.
    core.apply(&ControlMessage::ClearBpm).unwrap();
    core.apply(&prompt("house")).unwrap();
    core.apply(&ControlMessage::SetSource {
        source: SourceSpec::None,
    })
    .unwrap();
    let st = core.state();
    assert_eq!(st.source_analysis, None);
    assert_eq!(st.used.unwrap().prompt.bpm, Some(124.0));
}

#[test]
fn a_prompt_without_a_task_plays_a_cover_while_a_source_plays() {
    let mut core = core("house", song_at_100_bpm(300));
    let st = core.state();
    assert_eq!((st.task, st.task_auto), (GenerationTask::Cover, true));
    let set_task = |task| ControlMessage::SetPrompt {
        prompt: None,
        prompt_b: None,
        negative: None,
        bpm: None,
        key: None,
        lyrics: Some("[Instrumental]".into()),
        time_signature: Some(3),
        language: Some("en".into()),
        task: Some(task),
    };
    core.apply(&set_task(PromptTask::TextToMusic)).unwrap();
    let st = core.state();
    assert_eq!(
        (st.task, st.task_auto),
        (GenerationTask::TextToMusic, false)
    );
    assert_eq!(
        (
            st.lyrics.as_str(),
            st.time_signature,
            st.language.as_deref()
        ),
        ("[Instrumental]", Some(3), Some("en"))
    );
    // A preset carries the task and the fields, and gives them back.
    let preset = core.preset();
    assert_eq!(preset.prompts.task, PromptTask::TextToMusic);
    assert_eq!(preset.prompts.time_signature, Some(3));
    core.apply(&set_task(PromptTask::Auto)).unwrap();
    assert_eq!(core.state().task, GenerationTask::Cover);
    core.apply(&ControlMessage::load_preset(preset)).unwrap();
    let st = core.state();
    assert_eq!(
        (st.task, st.task_auto),
        (GenerationTask::TextToMusic, false)
    );
    // Auto without a source is text to music; 0 and "" remove the fields.
    core.apply(&set_task(PromptTask::Auto)).unwrap();
    core.apply(&ControlMessage::SetSource {
        source: SourceSpec::None,
    })
    .unwrap();
    core.apply(&ControlMessage::SetPrompt {
        prompt: None,
        prompt_b: None,
        negative: None,
        bpm: None,
        key: None,
        lyrics: Some(String::new()),
        time_signature: Some(0),
        language: Some(" ".into()),
        task: None,
    })
    .unwrap();
    let st = core.state();
    assert_eq!((st.task, st.task_auto), (GenerationTask::TextToMusic, true));
    assert_eq!(
        (st.lyrics.as_str(), st.time_signature, st.language),
        ("", None, None)
    );
}

#[test]
fn a_bad_time_signature_changes_nothing() {
    let mut core = core("house", SourceSpec::None);
    let before = core.state();
    let e = core
        .apply(&ControlMessage::SetPrompt {
            prompt: Some("techno".into()),
            prompt_b: None,
            negative: None,
            bpm: None,
            key: None,
            lyrics: None,
            time_signature: Some(99),
            language: None,
            task: None,
        })
        .unwrap_err();
    assert!(e.to_string().contains("time_signature"), "{e}");
    let after = core.state();
    assert_eq!(
        (before.prompt, before.time_signature),
        (after.prompt, after.time_signature)
    );
}

fn knob(name: &str, value: f64) -> ControlMessage {
    ControlMessage::SetKnob {
        name: name.into(),
        value,
    }
}

/// Issue 12, item 4: the live matcher takes what plays to its target and holds it there; off,
/// the played samples are the loop's own.
#[test]
fn the_loudness_matcher_plays_at_the_target() {
    let mut core = core("techno", SourceSpec::None);
    core.apply(&knob("loudness_match", 1.0)).unwrap();
    core.apply(&knob("target_lufs", -30.0)).unwrap();
    let mut tail: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
    let ticks = 25 * 40;
    for t in 0..ticks {
        core.tick(None).unwrap();
        // The matcher's window: the last 20 s.
        if t >= ticks - 25 * 20 {
            for (out, ch) in tail.iter_mut().zip(core.played()) {
                out.extend_from_slice(ch);
            }
        }
    }
    let r = core.state().loudness;
    assert!(r.matching && r.target_lufs == Some(-30.0), "{r:?}");
    let played = demon_engine::Audio::new(48_000, tail.to_vec()).unwrap();
    let lufs = demon_audio::analysis::integrated_lufs(&played).unwrap();
    let raw = r.short_term_lufs.unwrap();
    println!(
        "played at {lufs:.2} LUFS (the loop itself {raw:.2}), gain {:.2} dB",
        r.gain_db
    );
    assert!(
        (raw - -30.0).abs() > 5.0,
        "the loop alone is not already at the target"
    );
    // Within 1 LU: the matcher follows a 20 s sliding window of short-term readings at
    // 1.5 dB/s, so what played over the last 20 s includes some of its approach (an offline
    // render matches to 0.5 LU: `demon render --lufs`, tests of demon-cli).
    assert!((lufs - -30.0).abs() < 1.0, "{lufs} LUFS");

    // With a source, the target is the source's own loudness.
    let mut core = core_with_source();
    core.apply(&knob("loudness_match", 1.0)).unwrap();
    core.tick(None).unwrap();
    let st = core.state();
    assert_eq!(
        st.loudness.target_lufs,
        st.source_analysis.unwrap().integrated_lufs
    );
}

fn core_with_source() -> LiveCore {
    core("house", song_at_100_bpm(300))
}
