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
    for (dtype, rel) in [(DType::BF16, 2e-2f32), (DType::F16, 1e-2)] {
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

/// bf16 weights in the fused CPU kernels (`--cpu-precision bf16`): the fixture DiT's velocity of
/// both reference rows stays within 2e-2 of the f32 result and of the diffusers reference
/// (relative to the output scale), and a row's bytes do not depend on the batch it runs in.
#[test]
fn bf16_cpu_weights_stay_close_to_f32_and_rows_stay_exact() {
    use demon_acestep::dit::Row;
    use demon_acestep::dit::Workspace;
    use demon_acestep::gemm::Precision;

    let dev = Device::Cpu;
    let files = ModelFiles::discover(&original(), None).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.dit_config).unwrap()).unwrap();
    let cfg = DitConfig::from_original_json(&v, &files.dit_config).unwrap();
    let i = load("dit_inputs.safetensors");
    let reference = &load("reference.safetensors")["dit_out"];
    let t: Vec<f32> = i["timestep"].to_vec1().unwrap();
    let run = |precision: Precision| -> Tensor {
        let mut dit = Dit::load(&files.open_dit(&dev).unwrap(), &cfg).unwrap();
        dit.set_cpu_precision(precision).unwrap();
        assert_eq!(dit.cpu_precision(), Some(precision));
        let kvs: Vec<_> = (0..2)
            .map(|r| {
                dit.cross_kv(&i["encoder_hidden_states"].narrow(0, r, 1).unwrap(), None)
                    .unwrap()
            })
            .collect();
        let xs: Vec<Tensor> = (0..2)
            .map(|r| i["hidden_states"].narrow(0, r, 1).unwrap())
            .collect();
        let ctxs: Vec<Tensor> = (0..2)
            .map(|r| i["context_latents"].narrow(0, r, 1).unwrap())
            .collect();
        let row = |r: usize| Row {
            x: &xs[r],
            context: &ctxs[r],
            t: t[r],
            t_minus_r: 0.0,
            kv: &kvs[r],
        };
        let mut ws = Workspace::default();
        let both = dit.forward_batch_with(&mut ws, &[row(0), row(1)]).unwrap();
        let alone = dit.forward_batch_with(&mut ws, &[row(1)]).unwrap();
        assert_eq!(bits(&both.narrow(0, 1, 1).unwrap()), bits(&alone));
        both
    };
    let f32_out = &run(Precision::F32);
    let bf16_out = &run(Precision::Bf16);
    let scale = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(bf16_out, f32_out);
    let d_ref = max_abs_diff(bf16_out, reference);
    println!(
        "bf16 weights: max abs diff {d:.3e} to f32, {d_ref:.3e} to the reference (scale {scale:.3e})"
    );
    assert!(d > 0.0, "the bf16 path did not run");
    assert!(d <= 2e-2 * scale, "bf16 vs f32: {d} at scale {scale}");
    assert!(
        d_ref <= 2e-2 * scale,
        "bf16 vs reference: {d_ref} at scale {scale}"
    );
}
