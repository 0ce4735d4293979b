//! Timbre and structure references in a live session (issue 12, item 1): `set_reference` gives
//! the `timbre` or `structure` fader a reference of its own instead of the playing source's.
//! A reference changes what is submitted (the conditioning for timbre, the structural context
//! for structure) and the audio that comes out; clearing it gives back the requests of the
//! session that never had it, value for value; a reference of another length loops over the
//! window; a bad reference changes nothing.

use candle_core::Tensor;
use demon_engine::{BackendSet, SlotRequest};
use demon_live::control::{ControlMessage, ReferenceRole, SourceSpec};
use demon_live::core::{LiveCore, SessionConfig, latent_spec};

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

/// A composed song of `style` as a latent source spec (`frames` latent frames).
fn song(style: demon_sketch::Style, seed: u64, frames: usize) -> SourceSpec {
    let song = demon_sketch::composer::compose(demon_sketch::composer::SongSpec {
        style,
        bpm: 100.0,
        tonic: 2,
        minor: false,
        seed,
        frames,
    });
    let t = Tensor::from_vec(song.latent, (1, frames, 64), &candle_core::Device::Cpu).unwrap();
    latent_spec(&format!("{style:?}-{seed}"), &t).unwrap()
}

fn style(name: &str) -> demon_sketch::Style {
    let w = demon_sketch::style::read_prompt(name).style_weights;
    let best = (0..w.len()).fold(0, |b, i| if w[i] > w[b] { i } else { b });
    demon_sketch::Style::from_index(best).unwrap()
}

/// A session playing a house song, with both reference faders fully open.
fn core() -> LiveCore {
    let cfg = SessionConfig {
        song_seconds: 8.0,
        prompt: "house, 124 bpm".into(),
        source: song(style("house"), 1, 150),
        ..Default::default()
    };
    let mut core = LiveCore::new(cfg, sketch()).unwrap();
    // No slew: the faders are open from the first request on.
    core.apply(&ControlMessage::SetSlew { per_second: 0.0 })
        .unwrap();
    for (name, value) in [("timbre", 1.0), ("structure", 1.0), ("denoise", 0.6)] {
        core.apply(&ControlMessage::SetKnob {
            name: name.into(),
            value,
        })
        .unwrap();
    }
    core
}

fn values(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

/// What a reference can change in a request: the primary conditioning and the context.
fn submitted(core: &mut LiveCore) -> (Vec<u32>, Vec<u32>) {
    let (r, _): (SlotRequest, _) = core.next_request().unwrap();
    (
        values(&r.conditions[0].conditioning.states),
        values(&r.context),
    )
}

fn set(core: &mut LiveCore, role: ReferenceRole, source: SourceSpec) -> ControlMessage {
    core.apply(&ControlMessage::SetReference { role, source })
        .unwrap()
}

#[test]
fn each_reference_changes_only_its_part_and_clearing_restores_the_requests() {
    let mut core = core();
    let (cond0, ctx0) = submitted(&mut core);

    // Timbre from a funk song: the conditioning moves, the context stays.
    let recorded = set(
        &mut core,
        ReferenceRole::Timbre,
        song(style("funk"), 5, 150),
    );
    assert!(
        matches!(
            &recorded,
            ControlMessage::SetReference {
                source: SourceSpec::Latent { .. },
                ..
            }
        ),
        "recorded as a latent: {recorded:?}"
    );
    let (cond1, ctx1) = submitted(&mut core);
    assert_ne!(cond1, cond0, "a timbre reference changes the conditioning");
    assert_eq!(ctx1, ctx0, "and not the structure");
    let state = core.state();
    assert_eq!(state.timbre_reference.as_deref(), Some("Funk-5"));
    assert_eq!(state.structure_reference, None);

    // Structure from a techno song of another length (looped): the context moves.
    set(
        &mut core,
        ReferenceRole::Structure,
        song(style("techno"), 9, 40),
    );
    let (cond2, ctx2) = submitted(&mut core);
    assert_eq!(
        cond2, cond1,
        "a structure reference leaves the conditioning"
    );
    assert_ne!(ctx2, ctx1, "and changes the context");

    // Cleared, both: the requests of the session that never had them, bit for bit.
    set(&mut core, ReferenceRole::Timbre, SourceSpec::None);
    set(&mut core, ReferenceRole::Structure, SourceSpec::None);
    assert_eq!(submitted(&mut core), (cond0, ctx0));
    let state = core.state();
    assert_eq!(
        (state.timbre_reference, state.structure_reference),
        (None, None)
    );
}

#[test]
fn a_short_structure_reference_loops_over_the_window() {
    // A 40-frame reference for a 150-frame song: frames 40.. repeat frames 0.., so a reference
    // made of that loop four times over gives the same context.
    let short = song(style("techno"), 9, 40);
    let SourceSpec::Latent { data_b64, .. } = &short else {
        unreachable!()
    };
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data_b64)
        .unwrap();
    let frame_bytes = 64 * 4;
    let mut long = Vec::new();
    while long.len() < 150 * frame_bytes {
        long.extend_from_slice(&bytes);
    }
    long.truncate(150 * frame_bytes);
    let long = SourceSpec::Latent {
        name: "tiled".into(),
        frames: 150,
        channels: 64,
        data_b64: base64::engine::general_purpose::STANDARD.encode(long),
    };
    let mut a = core();
    set(&mut a, ReferenceRole::Structure, short);
    let mut b = core();
    set(&mut b, ReferenceRole::Structure, long);
    assert_eq!(submitted(&mut a).1, submitted(&mut b).1);
}

#[test]
fn a_timbre_reference_changes_the_audio_and_bad_references_change_nothing() {
    let run = |with_reference: bool| {
        let mut core = core();
        if with_reference {
            set(
                &mut core,
                ReferenceRole::Timbre,
                song(style("funk"), 5, 150),
            );
        }
        for _ in 0..40 {
            core.tick(None).unwrap();
        }
        core.latest_audio().unwrap().channels[0].clone()
    };
    assert_ne!(run(false), run(true), "the reference is heard");

    let mut core = core();
    let before = submitted(&mut core);
    let wrong_channels = SourceSpec::Latent {
        name: "bad".into(),
        frames: 2,
        channels: 3,
        data_b64: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
    };
    let e = core
        .apply(&ControlMessage::SetReference {
            role: ReferenceRole::Timbre,
            source: wrong_channels,
        })
        .unwrap_err();
    assert!(e.to_string().contains("latent channels"), "{e}");
    // Over a minute long: refused, naming the limit.
    let e = core
        .apply(&ControlMessage::SetReference {
            role: ReferenceRole::Structure,
            source: song(style("funk"), 5, 2000),
        })
        .unwrap_err();
    assert!(e.to_string().contains("at most 60 s"), "{e}");
    assert_eq!(submitted(&mut core), before, "nothing changed");
    assert_eq!(core.state().timbre_reference, None);
}

/// A latent source spec renamed (the name is what a preset saves).
fn named(spec: SourceSpec, name: &str) -> SourceSpec {
    match spec {
        SourceSpec::Latent {
            frames,
            channels,
            data_b64,
            ..
        } => SourceSpec::Latent {
            name: name.into(),
            frames,
            channels,
            data_b64,
        },
        other => other,
    }
}

#[test]
fn a_preset_carries_the_references_and_loading_it_gives_the_same_requests() {
    use demon_live::preset::PresetSource;
    use std::collections::BTreeMap;

    let timbre = named(song(style("funk"), 5, 150), "library:funk:5");
    let structure = named(song(style("techno"), 9, 40), "take.wav");
    let mut played = core();
    set(&mut played, ReferenceRole::Timbre, timbre.clone());
    set(&mut played, ReferenceRole::Structure, structure.clone());
    let preset = played.preset();
    assert_eq!(
        preset.references.timbre,
        PresetSource::Library {
            style: "funk".into(),
            index: 5
        }
    );
    assert_eq!(
        preset.references.structure,
        PresetSource::Upload {
            name: "take.wav".into()
        }
    );
    let json = preset.to_json();
    assert!(json.contains("\"references\""), "{json}");
    assert_eq!(
        demon_live::preset::Preset::from_json(json.as_bytes()).unwrap(),
        preset
    );

    // Loaded with its references resolved (what a front end does): the same requests, bit
    // for bit, as the session that set them one by one; recorded as latents.
    let mut loaded = core();
    let references = BTreeMap::from([
        (ReferenceRole::Timbre, timbre),
        (ReferenceRole::Structure, structure),
    ]);
    let recorded = loaded
        .apply(&ControlMessage::LoadPreset {
            preset: Box::new(preset.clone()),
            source: None,
            references,
        })
        .unwrap();
    let ControlMessage::LoadPreset { references, .. } = &recorded else {
        panic!("{recorded:?}")
    };
    assert!(
        references
            .values()
            .all(|s| matches!(s, SourceSpec::Latent { .. })),
        "{references:?}"
    );
    let st = loaded.state();
    assert_eq!(st.timbre_reference.as_deref(), Some("library:funk:5"));
    assert_eq!(st.structure_reference.as_deref(), Some("take.wav"));
    assert_eq!(submitted(&mut loaded), submitted(&mut played));

    // A reference that cannot be one (over a minute) refuses the whole preset, naming it.
    let mut refused = core();
    let before = submitted(&mut refused);
    let e = refused
        .apply(&ControlMessage::LoadPreset {
            preset: Box::new(preset),
            source: None,
            references: BTreeMap::from([(ReferenceRole::Structure, song(style("funk"), 5, 2000))]),
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("references.structure") && e.to_string().contains("at most 60 s"),
        "{e}"
    );
    assert_eq!(refused.state().timbre_reference, None, "nothing changed");
    assert_eq!(submitted(&mut refused), before);
}
