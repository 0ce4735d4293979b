//! Shared helpers of the parity tests: fixture paths, tensor loading, max-abs-diff.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use demon_acestep::weights::SafetensorsFile;

/// The committed fixtures; `DEMON_ACESTEP_FIXTURES` overrides the folder for a test binary
/// carried to another machine (scripts/gpu-run.sh), where the build's source path is absent.
pub fn fixtures() -> PathBuf {
    match std::env::var_os("DEMON_ACESTEP_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

pub fn original() -> PathBuf {
    fixtures().join("weights/original")
}

pub fn diffusers() -> PathBuf {
    fixtures().join("weights/diffusers")
}

/// Every tensor of a fixture file, as f32.
pub fn load(name: &str) -> HashMap<String, Tensor> {
    let f = SafetensorsFile::open(&fixtures().join(name)).expect("fixture file");
    let names: Vec<String> = f.names().map(str::to_owned).collect();
    names
        .into_iter()
        .map(|n| (n.clone(), f.load(&n, &Device::Cpu).expect("fixture tensor")))
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Assert and report a parity bound.
pub fn check(what: &str, got: &Tensor, want: &Tensor, bound: f32) -> f32 {
    let d = max_abs_diff(got, want);
    println!("PARITY {what}: max abs diff {d:.3e} (bound {bound:.0e})");
    assert!(d <= bound, "{what}: max abs diff {d} > {bound}");
    d
}

pub fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

/// The reference prompt of the fixtures as a demon-engine `Prompt`.
pub fn fixture_prompt() -> demon_engine::Prompt {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let p = &cases["prompt"];
    demon_engine::Prompt {
        tags: p["caption"].as_str().unwrap().into(),
        lyrics: p["lyrics"].as_str().unwrap().into(),
        bpm: Some(p["bpm"].as_f64().unwrap() as f32),
        key: Some(p["keyscale"].as_str().unwrap().into()),
        time_signature: Some(p["timesignature"].as_u64().unwrap() as u32),
        language: Some(p["language"].as_str().unwrap().into()),
        duration_s: Some(p["duration"].as_f64().unwrap() as f32),
        task: None,
        hints: None,
    }
}

/// A fresh copy of a fixture weights folder in a temporary directory.
pub fn temp_copy(src: &std::path::Path, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("demon-acestep-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    copy_dir(src, &dst);
    dst
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

pub fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}
