//! Each broken weights folder gives its own clear error naming the file (and the tensor), never a
//! panic: missing file, truncated file, a tensor shape that does not match the config, an unknown
//! layout, a truncated silence latent.

mod common;

use candle_core::Device;
use common::*;
use demon_acestep::{AceStep, AceStepError, inspect_weights};

fn load_err(dir: &std::path::Path) -> AceStepError {
    match AceStep::load(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_file() {
    let dir = temp_copy(&original(), "missing");
    let vae = dir.join("vae/diffusion_pytorch_model.safetensors");
    std::fs::remove_file(&vae).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, AceStepError::MissingFile { .. }), "{e:?}");
    assert!(e.to_string().contains("vae"), "{e}");
    // Inspecting reports the missing part instead of refusing the folder (issue 11 item 12).
    let report = inspect_weights(&dir).unwrap();
    assert!(report.missing.iter().any(|p| p.name == "vae"), "{report}");
    // A shard named by the index but absent.
    let dir2 = temp_copy(&original(), "missing-shard");
    std::fs::remove_file(dir2.join("acestep-v15-turbo/model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&dir2);
    assert!(
        e.to_string().contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
    println!("missing file: {e}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

#[test]
fn broken_tokenizer() {
    let dir = temp_copy(&original(), "tokenizer");
    let tok = dir.join("Qwen3-Embedding-0.6B/tokenizer.json");
    std::fs::write(&tok, "{\"version\": \"1.0\", \"model\": 17}").unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, AceStepError::Tokenizer { .. }), "{e:?}");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    std::fs::remove_file(&tok).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, AceStepError::MissingFile { .. }), "{e:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn truncated_file() {
    let dir = temp_copy(&original(), "truncated");
    let shard = dir.join("acestep-v15-turbo/model-00001-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, AceStepError::Truncated { .. }), "{e:?}");
    assert!(
        e.to_string().contains("model-00001-of-00002.safetensors"),
        "{e}"
    );
    println!("truncated file: {e}");
    // Shorter than the header length field itself.
    f.set_len(3).unwrap();
    assert!(matches!(load_err(&dir), AceStepError::Truncated { .. }));
    // A truncated silence latent.
    let dir2 = temp_copy(&original(), "truncated-silence");
    let pt = dir2.join("acestep-v15-turbo/silence_latent.pt");
    let f = std::fs::OpenOptions::new().write(true).open(&pt).unwrap();
    f.set_len(1000).unwrap();
    let e = load_err(&dir2);
    assert!(e.to_string().contains("silence_latent.pt"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

#[test]
fn shape_that_does_not_match_the_config() {
    let dir = temp_copy(&original(), "shape");
    let cfg_path = dir.join("acestep-v15-turbo/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(100);
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = load_err(&dir);
    match &e {
        AceStepError::ShapeMismatch {
            tensor,
            path,
            expected,
            got,
        } => {
            assert!(tensor.contains("mlp"), "{tensor}");
            assert!(path.to_string_lossy().contains("model-0000"), "{path:?}");
            assert_ne!(expected, got);
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    println!("wrong shape: {e}");
    // Diffusers layout too.
    let dir2 = temp_copy(&diffusers(), "shape-diffusers");
    let cfg_path = dir2.join("transformer/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["hidden_size"] = serde_json::json!(48);
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = load_err(&dir2);
    assert!(matches!(e, AceStepError::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("transformer"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

#[test]
fn unknown_layout() {
    let dir = std::env::temp_dir().join(format!("demon-acestep-unknown-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("something")).unwrap();
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, AceStepError::UnknownLayout { .. }), "{e:?}");
    assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
    println!("unknown layout: {e}");
    let e = load_err(&dir.join("does-not-exist"));
    assert!(matches!(e, AceStepError::MissingFile { .. }), "{e:?}");
    // Bad JSON in a config is an error naming the file.
    let dir2 = temp_copy(&original(), "badjson");
    std::fs::write(dir2.join("vae/config.json"), "{not json").unwrap();
    let e = load_err(&dir2);
    assert!(e.to_string().contains("vae/config.json"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}
