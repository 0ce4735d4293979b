//! Shared helpers of the parity tests: fixture paths, tensor loading, max-abs-diff.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use demon_acestep::weights::SafetensorsFile;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
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
    names.into_iter().map(|n| (n.clone(), f.load(&n, &Device::Cpu).expect("fixture tensor"))).collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Assert and report a parity bound.
pub fn check(what: &str, got: &Tensor, want: &Tensor, bound: f32) -> f32 {
    let d = max_abs_diff(got, want);
    println!("PARITY {what}: max abs diff {d:.3e} (bound {bound:.0e})");
    assert!(d <= bound, "{what}: max abs diff {d} > {bound}");
    d
}

pub fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(|v| v as u32).collect()
}
