//! The same tiny model saved in the original layout (sharded DiT checkpoint, silence_latent.pt,
//! Qwen3-Embedding folder) and in the diffusers layout (model_index.json) loads and gives
//! byte-identical outputs; `inspect_weights` and `debug_forward` work on both.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use demon_acestep::{AceStep, Component, Layout, Task, debug_forward, inspect_weights};
use demon_engine::{Codec, Conditioner, DenoiseBatch, Denoiser};

#[test]
fn both_layouts_give_byte_identical_outputs() {
    let dev = Device::Cpu;
    let mut a = AceStep::load(&original(), &dev).unwrap();
    let mut b = AceStep::load(&diffusers(), &dev).unwrap();
    assert_eq!(a.source.as_ref().unwrap().1, Layout::Original);
    assert_eq!(b.source.as_ref().unwrap().1, Layout::Diffusers);
    assert_eq!(a.config, b.config);

    let p = fixture_prompt();
    let ca = a.conditioner.condition_for(&p, Task::Text2Music).unwrap();
    let cb = b.conditioner.condition_for(&p, Task::Text2Music).unwrap();
    assert_eq!(bits(&ca.states), bits(&cb.states), "conditioning");

    let r = load("reference.safetensors");
    let frames = 13;
    let ctx_a = a
        .conditioner
        .context(
            Some(&r["fsq_in"].narrow(1, 0, frames).unwrap()),
            frames,
            0.7,
        )
        .unwrap();
    let ctx_b = b
        .conditioner
        .context(
            Some(&r["fsq_in"].narrow(1, 0, frames).unwrap()),
            frames,
            0.7,
        )
        .unwrap();
    assert_eq!(bits(&ctx_a), bits(&ctx_b), "structure context (FSQ hint)");

    let x = r["gen_noise"].clone();
    let va = a
        .denoiser
        .velocity(&DenoiseBatch {
            x: x.clone(),
            t: vec![0.75],
            conditions: vec![&ca],
            contexts: vec![&ctx_a],
            sources: Vec::new(),
        })
        .unwrap();
    let vb = b
        .denoiser
        .velocity(&DenoiseBatch {
            x,
            t: vec![0.75],
            conditions: vec![&cb],
            contexts: vec![&ctx_b],
            sources: Vec::new(),
        })
        .unwrap();
    assert_eq!(bits(&va), bits(&vb), "velocity");

    let lat = Tensor::randn(0f32, 0.5, (1, 10, 8), &dev).unwrap();
    let da = a.codec.decode(&lat, 0).unwrap();
    let db = b.codec.decode(&lat, 0).unwrap();
    assert_eq!(da, db, "decoded audio");
    let ea = a.codec.encode(&da).unwrap();
    let eb = b.codec.encode(&db).unwrap();
    assert_eq!(bits(&ea), bits(&eb), "encoded latent");
}

#[test]
fn inspect_reports_components_of_both_layouts() {
    let o = inspect_weights(&original()).unwrap();
    let d = inspect_weights(&diffusers()).unwrap();
    assert_eq!(o.layout, Layout::Original);
    assert_eq!(d.layout, Layout::Diffusers);
    let total =
        |r: &demon_acestep::WeightsReport| r.components.iter().map(|c| c.parameters).sum::<usize>();
    // The diffusers condition encoder also stores the silence latent (15000 × 8 values).
    assert_eq!(total(&d), total(&o) + 15000 * 8);
    let text = o.to_string();
    assert!(
        text.contains("original ACE-Step layout") && text.contains("F32") && text.contains("vae"),
        "{text}"
    );
    println!("{o}\n{d}");
}

#[test]
fn debug_forward_matches_the_reference_on_both_layouts() {
    let r = load("reference.safetensors");
    let out = std::env::temp_dir().join(format!(
        "demon-acestep-debug-{}.safetensors",
        std::process::id()
    ));
    for dir in [original(), diffusers()] {
        let cases = [
            (
                Component::TextEncoder,
                "text_encoder_inputs.safetensors",
                "text_hidden",
            ),
            (
                Component::ConditionEncoder,
                "condition_encoder_inputs.safetensors",
                "encoder_hidden_states",
            ),
            (Component::Dit, "dit_inputs.safetensors", "dit_out"),
            (Component::Dit, "dit_inputs_r.safetensors", "dit_out_r"),
            (
                Component::VaeDecode,
                "vae_decode_inputs.safetensors",
                "vae_decoded",
            ),
            (
                Component::VaeEncode,
                "vae_encode_inputs.safetensors",
                "vae_encoded_mean",
            ),
        ];
        for (c, inp, want) in cases {
            let got = debug_forward(c, &dir, &fixtures().join(inp), &out).unwrap();
            check(&format!("debug-forward {c}"), &got, &r[want], 1e-4);
            let saved = demon_acestep::weights::SafetensorsFile::open(&out)
                .unwrap()
                .load("out", &Device::Cpu)
                .unwrap();
            assert_eq!(bits(&saved), bits(&got));
        }
        let got = debug_forward(
            Component::FsqRoundtrip,
            &dir,
            &fixtures().join("fsq_inputs.safetensors"),
            &out,
        )
        .unwrap();
        check(
            "debug-forward fsq-roundtrip",
            &got,
            &r["fsq_hint"].narrow(1, 0, 23).unwrap(),
            1e-4,
        );
    }
    assert!("no-such".parse::<Component>().is_err());
    let _ = std::fs::remove_file(out);
}

#[test]
fn a_dit_folder_or_a_named_variant_also_loads() {
    let dev = Device::Cpu;
    let direct = AceStep::load(&original().join("acestep-v15-turbo"), &dev).unwrap();
    assert_eq!(direct.source.as_ref().unwrap().1, Layout::Original);
    let named = AceStep::load_variant(&original(), Some("acestep-v15-turbo"), &dev).unwrap();
    assert_eq!(named.config, direct.config);
    let e = AceStep::load_variant(&original(), Some("acestep-v15-xl-turbo"), &dev)
        .err()
        .unwrap();
    assert!(e.to_string().contains("acestep-v15-xl-turbo"), "{e}");
}
