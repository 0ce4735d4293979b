//! Folders holding only some components (issue 11 item 12, issue 13 item 6): `debug_forward`,
//! `inspect_weights` and `AceStepDenoiser::load` read only what they need, report what is there
//! and what is not, and give the reference's results; a whole-model load of such a folder is
//! refused with what it holds and lacks.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::*;
use demon_acestep::{AceStep, AceStepDenoiser, AceStepError, Component, debug_forward};
use demon_engine::{Conditioning, DenoiseBatch, Denoiser};

/// A temporary folder holding copies of `parts` (folders or files) of the fixture folder `src`.
fn only(src: &Path, parts: &[&str], tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("demon-acestep-only-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let full = temp_copy(src, &format!("only-{tag}-full"));
    std::fs::create_dir_all(&dir).unwrap();
    for p in parts {
        std::fs::rename(full.join(p), dir.join(p)).unwrap();
    }
    let _ = std::fs::remove_dir_all(full);
    dir
}

fn out_file(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "demon-acestep-partial-{tag}-{}.safetensors",
        std::process::id()
    ))
}

#[test]
fn debug_forward_dit_on_a_transformer_folder_alone_matches_the_reference() {
    let r = load("reference.safetensors");
    let dir = only(&diffusers(), &["transformer"], "transformer");
    let out = out_file("dit");
    // The folder holding `transformer/`, and the `transformer/` folder itself.
    for weights in [dir.clone(), dir.join("transformer")] {
        for (inp, want) in [
            ("dit_inputs.safetensors", "dit_out"),
            ("dit_inputs_r.safetensors", "dit_out_r"),
        ] {
            let got = debug_forward(Component::Dit, &weights, &fixtures().join(inp), &out)
                .unwrap_or_else(|e| panic!("{}: {e}", weights.display()));
            check(
                "debug-forward dit, transformer/ alone",
                &got,
                &r[want],
                1e-4,
            );
        }
    }
    // Components the folder does not hold are refused naming what is there and what is not.
    let e = debug_forward(
        Component::VaeDecode,
        &dir,
        &fixtures().join("vae_decode_inputs.safetensors"),
        &out,
    )
    .unwrap_err();
    assert!(matches!(e, AceStepError::MissingFile { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("vae") && msg.contains("present: dit"), "{msg}");
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn each_component_alone_runs_its_debug_forward() {
    let r = load("reference.safetensors");
    let out = out_file("components");
    let cases = [
        (
            original(),
            "vae",
            Component::VaeDecode,
            "vae_decode_inputs.safetensors",
            "vae_decoded",
        ),
        (
            diffusers(),
            "vae",
            Component::VaeEncode,
            "vae_encode_inputs.safetensors",
            "vae_encoded_mean",
        ),
        (
            original(),
            "Qwen3-Embedding-0.6B",
            Component::TextEncoder,
            "text_encoder_inputs.safetensors",
            "text_hidden",
        ),
        (
            diffusers(),
            "condition_encoder",
            Component::ConditionEncoder,
            "condition_encoder_inputs.safetensors",
            "encoder_hidden_states",
        ),
    ];
    for (src, part, c, inp, want) in cases {
        let dir = only(&src, &[part], part);
        let got = debug_forward(c, &dir, &fixtures().join(inp), &out)
            .unwrap_or_else(|e| panic!("{c} on {part}/ alone: {e}"));
        check(
            &format!("debug-forward {c}, {part}/ alone"),
            &got,
            &r[want],
            1e-4,
        );
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_file(out);
}

#[test]
fn inspect_reports_what_a_partial_folder_holds_and_lacks() {
    let dir = only(&diffusers(), &["transformer"], "inspect");
    let report = demon_acestep::inspect_weights(&dir).unwrap();
    let names: Vec<&str> = report.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["transformer"]);
    let missing: Vec<&str> = report.missing.iter().map(|p| p.name).collect();
    for m in ["condition encoder", "text encoder", "tokenizer", "vae"] {
        assert!(
            missing.contains(&m),
            "{m} not reported missing: {missing:?}"
        );
    }
    assert!(!missing.contains(&"dit"));
    let text = report.to_string();
    assert!(text.contains("missing vae"), "{text}");
    // A whole model cannot load from it, and the error says what the folder holds.
    let e = match AceStep::load(&dir, &Device::Cpu) {
        Ok(_) => panic!("a transformer alone is not a whole model"),
        Err(e) => e,
    };
    assert!(matches!(e, AceStepError::MissingFile { .. }), "{e:?}");
    assert!(e.to_string().contains("present: dit"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `AceStepDenoiser::load` on a bare `transformer/` gives the bytes of the whole model's DiT.
#[test]
fn a_denoiser_loads_from_a_bare_transformer_folder() {
    let dev = Device::Cpu;
    let dir = only(&diffusers(), &["transformer"], "denoiser");
    let mut alone = AceStepDenoiser::load(&dir.join("transformer"), &dev).unwrap();
    let (mut whole, _, _) = AceStep::load(&diffusers(), &dev).unwrap().into_parts();
    assert_eq!(alone.config().hidden_size, whole.config().hidden_size);
    let frames = 9;
    let x = Tensor::randn(0f32, 1.0, (1, frames, 8), &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, frames, 16), &dev).unwrap();
    let cond = Conditioning::new(Tensor::randn(0f32, 1.0, (1, 5, 32), &dev).unwrap()).unwrap();
    let batch = DenoiseBatch {
        x,
        t: vec![0.7],
        conditions: vec![&cond],
        contexts: vec![&ctx],
        sources: Vec::new(),
    };
    let a = alone.velocity(&batch).unwrap();
    let b = whole.velocity(&batch).unwrap();
    assert_eq!(bits(&a), bits(&b));
    let _ = std::fs::remove_dir_all(dir);
}
