//! LoRA: the PEFT adapter (diffusers module names), the same adapter with upstream module names,
//! and a ComfyUI single file (lora_down/lora_up, per-module alpha) all merge to PEFT's own
//! `merge_and_unload` weights; strength changes, toggles and swaps never touch the checkpoint
//! files (they are deleted after load).

mod common;

use candle_core::Device;
use common::*;
use demon_acestep::AceStep;
use demon_engine::{Conditioning, DenoiseBatch, Denoiser};

#[test]
fn every_adapter_format_matches_the_peft_merge() {
    let merged = load("lora/merged_reference.safetensors");
    let r = load("reference.safetensors");
    for adapter in ["lora/peft", "lora/upstream", "lora/comfy_lora.safetensors"] {
        let mut m = AceStep::load(&original(), &Device::Cpu).unwrap();
        let id = m.denoiser.add_lora(&fixtures().join(adapter), 1.0).unwrap();
        assert_eq!(m.denoiser.loras()[0].modules, 32);
        let mut worst = 0f32;
        for (name, want) in &merged {
            let module = name.strip_suffix(".weight").unwrap();
            let got = m.denoiser.module_weight(module).unwrap();
            worst = worst.max(max_abs_diff(&got, want));
        }
        println!("PARITY LoRA merge {adapter}: max abs diff {worst:.3e} (bound 1e-5)");
        assert!(worst <= 1e-5, "{adapter}: {worst}");
        // And the merged DiT's output against the PEFT-merged reference transformer.
        let i = load("dit_inputs.safetensors");
        let states: Vec<_> = (0..2)
            .map(|b| i["encoder_hidden_states"].narrow(0, b, 1).unwrap())
            .collect();
        let t: Vec<f32> = i["timestep"].to_vec1().unwrap();
        let y = m
            .denoiser
            .dit()
            .forward(&i["hidden_states"], &t, &t, &states, &i["context_latents"])
            .unwrap();
        check(
            &format!("LoRA DiT output {adapter}"),
            &y,
            &r["lora_dit_out"],
            1e-4,
        );
        m.denoiser.remove_lora(id).unwrap();
        assert!(m.denoiser.loras().is_empty());
    }
}

#[test]
fn strength_changes_never_reread_base_weights() {
    let dir = temp_copy(&original(), "lora-reread");
    let lora_dir = temp_copy(&fixtures().join("lora/peft"), "lora-adapter");
    let mut m = AceStep::load(&dir, &Device::Cpu).unwrap();
    let module = "decoder.layers.1.cross_attn.v_proj";
    let base = m.denoiser.module_weight(module).unwrap();
    let id = m.denoiser.add_lora(&lora_dir, 1.0).unwrap();
    // Remove every weight file and the adapter from disk: from here on only memory is used.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&lora_dir).unwrap();

    let full = load("lora/merged_reference.safetensors")[&format!("{module}.weight")].clone();
    let delta = (&full - &base).unwrap();
    for s in [0.5f32, -1.0, 2.0, 1.0] {
        m.denoiser.set_lora_strength(id, s).unwrap();
        let want = (&base + (&delta * s as f64).unwrap()).unwrap();
        assert!(
            max_abs_diff(&m.denoiser.module_weight(module).unwrap(), &want) <= 1e-5,
            "strength {s}"
        );
    }
    m.denoiser.set_lora_strength(id, 0.0).unwrap();
    assert_eq!(
        bits(&m.denoiser.module_weight(module).unwrap()),
        bits(&base),
        "strength 0 restores the base exactly"
    );
    m.denoiser.set_lora_strength(id, 1.0).unwrap();
    m.denoiser.set_lora_enabled(id, false).unwrap();
    assert_eq!(
        bits(&m.denoiser.module_weight(module).unwrap()),
        bits(&base),
        "disabled restores the base"
    );
    m.denoiser.set_lora_enabled(id, true).unwrap();
    assert!(max_abs_diff(&m.denoiser.module_weight(module).unwrap(), &full) <= 1e-5);
    // Swap: remove, add another file (comfy) at 0.5, which still exists in the fixtures.
    m.denoiser.remove_lora(id).unwrap();
    assert_eq!(
        bits(&m.denoiser.module_weight(module).unwrap()),
        bits(&base)
    );
    let id2 = m
        .denoiser
        .add_lora(&fixtures().join("lora/comfy_lora.safetensors"), 0.5)
        .unwrap();
    let half = (&base + (&delta * 0.5).unwrap()).unwrap();
    assert!(max_abs_diff(&m.denoiser.module_weight(module).unwrap(), &half) <= 1e-5);
    assert!(m.denoiser.set_lora_strength(id2, f32::NAN).is_err());
    assert!(m.denoiser.set_lora_strength(99, 1.0).is_err());

    // The cross-attention K/V cache is invalidated by a LoRA change.
    let frames = 6;
    let cond = Conditioning::new(
        candle_core::Tensor::ones((1, 4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let ctx =
        candle_core::Tensor::zeros((1, frames, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    let x =
        candle_core::Tensor::ones((1, frames, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let run = |d: &mut demon_acestep::AceStepDenoiser| {
        bits(
            &d.velocity(&DenoiseBatch {
                x: x.clone(),
                t: vec![0.5],
                conditions: vec![&cond],
                contexts: vec![&ctx],
                sources: Vec::new(),
            })
            .unwrap(),
        )
    };
    let before = run(&mut m.denoiser);
    m.denoiser.set_lora_strength(id2, 1.0).unwrap();
    assert_ne!(before, run(&mut m.denoiser));
    m.denoiser.set_lora_strength(id2, 0.5).unwrap();
    assert_eq!(before, run(&mut m.denoiser));
}

#[test]
fn bad_adapters_are_rejected() {
    let mut m = AceStep::load(&original(), &Device::Cpu).unwrap();
    let e = m
        .denoiser
        .add_lora(&fixtures().join("no-such-lora"), 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-lora"), "{e}");
    // A weight file that is not an adapter.
    let e = m
        .denoiser
        .add_lora(&fixtures().join("dit_inputs.safetensors"), 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no LoRA factors"), "{e}");
    assert!(m.denoiser.loras().is_empty());
}

/// Issue 12, item 2: a strength change through the engine's `Adapters` (what the live session
/// calls) merges the weights once, and not at all when nothing changes; disabling keeps the
/// strength, so enabling again gives the same weights.
#[test]
fn a_strength_change_merges_once() {
    use demon_engine::Adapters;
    let mut m = AceStep::load(&original(), &Device::Cpu).unwrap();
    let module = "decoder.layers.1.cross_attn.v_proj";
    let base = m.denoiser.module_weight(module).unwrap();
    m.denoiser
        .add_lora(&fixtures().join("lora/peft"), 1.0)
        .unwrap();
    let id = m.denoiser.list()[0].id.clone();
    let merges = m.denoiser.lora_merges();
    m.denoiser.set_strength(&id, 0.5).unwrap();
    assert_eq!(m.denoiser.lora_merges(), merges + 1, "one merge per change");
    let half = m.denoiser.module_weight(module).unwrap();
    m.denoiser.set_strength(&id, 0.5).unwrap();
    assert_eq!(
        m.denoiser.lora_merges(),
        merges + 1,
        "no merge without a change"
    );
    m.denoiser.set_strength(&id, 0.0).unwrap();
    assert_eq!(m.denoiser.lora_merges(), merges + 2);
    assert_eq!(
        bits(&m.denoiser.module_weight(module).unwrap()),
        bits(&base)
    );
    assert_eq!(m.denoiser.list()[0].strength, 0.0, "listed as off");
    m.denoiser.set_strength(&id, 0.5).unwrap();
    assert_eq!(m.denoiser.lora_merges(), merges + 3);
    assert_eq!(
        bits(&m.denoiser.module_weight(module).unwrap()),
        bits(&half)
    );
}

/// An adapter's sidecar `NAME.json` is read with it: the trigger words reach the engine's
/// `AdapterInfo` (the live session prepends them to the prompt); a bad sidecar is refused
/// naming the adapter and the key.
#[test]
fn an_adapter_sidecar_gives_its_trigger_words() {
    use demon_engine::Adapters;
    let dir = std::env::temp_dir().join(format!("demon-lora-sidecar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tape.safetensors");
    std::fs::copy(fixtures().join("lora/comfy_lora.safetensors"), &file).unwrap();
    std::fs::write(
        dir.join("tape.json"),
        r#"{"trigger_words": "tape hiss, lofi", "recommended_strength": 0.8, "group": "chill"}"#,
    )
    .unwrap();
    let mut m = AceStep::load(&original(), &Device::Cpu).unwrap();
    m.denoiser.add_lora(&file, 1.0).unwrap();
    let info = &m.denoiser.list()[0];
    assert_eq!(info.id, "tape");
    assert_eq!(info.metadata.trigger_words, vec!["tape hiss", "lofi"]);
    assert_eq!(info.metadata.recommended_strength, Some(0.8));
    assert_eq!(info.metadata.group.as_deref(), Some("chill"));

    std::fs::write(dir.join("tape.json"), r#"{"recommended_strength": "loud"}"#).unwrap();
    let e = m.denoiser.add_lora(&file, 1.0).unwrap_err().to_string();
    assert!(
        e.contains("tape.safetensors") && e.contains("recommended_strength"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 12, item 2: a library adapter is described from its files without reading its
/// tensors, loaded by `AdapterFiles` (a thread of its own in a live session), installed
/// disabled (no merge, every weight as it was), and enabled by a strength like any adapter.
/// `LoraScaling::Unscaled` (DEMON's strengths) drops PEFT's α/r: this adapter's α/r is 8/4, so
/// its delta at strength 1 is half the PEFT merge's.
#[test]
fn a_library_adapter_installs_disabled_and_scales_as_asked() {
    use demon_acestep::lora::LoraScaling;
    use demon_engine::Adapters;
    let peft = temp_copy(&fixtures().join("lora/peft"), "lora-library");
    std::fs::write(
        peft.join("metadata.json"),
        r#"{"trigger_words": ["lofi"], "group": "chill"}"#,
    )
    .unwrap();
    let module = "decoder.layers.1.cross_attn.v_proj";
    let full = load("lora/merged_reference.safetensors")[&format!("{module}.weight")].clone();
    for (scaling, share) in [
        (LoraScaling::AlphaOverRank, 1.0),
        (LoraScaling::Unscaled, 0.5),
    ] {
        let mut m = AceStep::load(&original(), &Device::Cpu).unwrap();
        m.denoiser.set_lora_scaling(scaling);
        let base = m.denoiser.module_weight(module).unwrap();
        let files = m.denoiser.files().unwrap();
        let meta = files.describe(&peft).unwrap();
        assert_eq!(meta.trigger_words, ["lofi"]);
        assert_eq!(meta.group.as_deref(), Some("chill"));
        let loaded = files.load(&peft).unwrap();
        let merges = m.denoiser.lora_merges();
        m.denoiser.install("lofi", meta.clone(), loaded).unwrap();
        let info = m.denoiser.list();
        assert_eq!((info[0].id.as_str(), info[0].strength), ("lofi", 0.0));
        assert_eq!(info[0].metadata.trigger_words, ["lofi"]);
        assert_eq!(
            m.denoiser.lora_merges(),
            merges,
            "installing merges nothing"
        );
        assert_eq!(
            bits(&m.denoiser.module_weight(module).unwrap()),
            bits(&base)
        );
        m.denoiser.set_strength("lofi", 1.0).unwrap();
        let want = (&base + ((&full - &base).unwrap() * share).unwrap()).unwrap();
        let diff = max_abs_diff(&m.denoiser.module_weight(module).unwrap(), &want);
        assert!(diff <= 1e-5, "{scaling:?}: {diff}");
        // The same id twice, and another backend's payload, are refused by name.
        let again = files.load(&peft).unwrap();
        let e = m.denoiser.install("lofi", meta.clone(), again).unwrap_err();
        assert!(e.to_string().contains("already loaded"), "{e}");
        let foreign = demon_engine::LoadedAdapter::new(peft.clone(), 1.0f32);
        let e = m.denoiser.install("other", meta, foreign).unwrap_err();
        assert!(e.to_string().contains("another backend"), "{e}");
    }
    std::fs::remove_dir_all(&peft).unwrap();
}
