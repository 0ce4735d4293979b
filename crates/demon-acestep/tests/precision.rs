//! Mixed-precision matrix products (the GPU option `Dit::set_matmul_dtype`) checked on the CPU
//! through the composed candle path: bf16 and f16 products with f32 accumulation stay close to
//! the f32 result of the fixture DiT.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use demon_acestep::config::DitConfig;
use demon_acestep::dit::Dit;
use demon_acestep::weights::ModelFiles;

#[test]
fn low_precision_matmuls_stay_close_to_f32() {
    let dev = Device::Cpu;
    let files = ModelFiles::discover(&original(), None).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.dit_config).unwrap()).unwrap();
    let cfg = DitConfig::from_original_json(&v, &files.dit_config).unwrap();
    let i = load("dit_inputs.safetensors");
    let x = i["hidden_states"].narrow(0, 0, 1).unwrap();
    let ctx = i["context_latents"].narrow(0, 0, 1).unwrap();
    let states = i["encoder_hidden_states"].narrow(0, 0, 1).unwrap();
    let t: Vec<f32> = i["timestep"].to_vec1().unwrap();
    let run = |dtype: Option<DType>| -> Tensor {
        let mut dit = Dit::load(&files.open_dit(&dev).unwrap(), &cfg).unwrap();
        dit.set_matmul_dtype(dtype).unwrap();
        let kv = dit.cross_kv(&states, None).unwrap();
        dit.forward_row_candle(&x, &ctx, t[0], 0.0, &kv).unwrap()
    };
    let want = run(None);
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for (dtype, rel) in [(DType::BF16, 5e-2f32), (DType::F16, 1e-2)] {
        let got = run(Some(dtype));
        assert_eq!(got.dtype(), DType::F32);
        let d = max_abs_diff(&got, &want);
        println!("{dtype:?} products: max abs diff {d:.3e} (output scale {scale:.3e})");
        assert!(d > 0.0, "{dtype:?}: the low-precision path did not run");
        assert!(d <= rel * scale.max(1.0), "{dtype:?}: {d} at scale {scale}");
    }
    // The f32 setting restores the exact f32 result.
    assert_eq!(max_abs_diff(&run(Some(DType::F32)), &want), 0.0);
}
