//! GPU checks (issue #6). Every test is ignored by default, so `cargo test` lists them as
//! ignored on any machine; `scripts/gpu-check.sh` runs them on a GPU machine with `-- --ignored`.
//! Run that way, a test fails when there is no CUDA device (a build without `--features cuda`
//! has none).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use demon_acestep::AceStep;
use demon_acestep::config::{DitConfig, VaeConfig};
use demon_acestep::dit::Dit;
use demon_acestep::vae::VaeDecoder;
use demon_acestep::weights::ModelFiles;
use demon_engine::{Conditioning, DenoiseBatch, Denoiser};

/// The same bound as the CPU parity tests.
const BOUND: f32 = 1e-4;

fn gpu() -> Device {
    match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => panic!("no CUDA device: {e}"),
    }
}

fn dit_config(files: &ModelFiles) -> DitConfig {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.dit_config).unwrap()).unwrap();
    DitConfig::from_original_json(&v, &files.dit_config).unwrap()
}

fn run_dit(dit: &Dit, dev: &Device, inputs: &str) -> Tensor {
    let i = load(inputs);
    let on = |t: &Tensor| t.to_device(dev).unwrap();
    let t: Vec<f32> = i["timestep"].to_vec1().unwrap();
    let r: Vec<f32> = i["timestep_r"].to_vec1().unwrap();
    let states: Vec<_> = (0..2)
        .map(|b| on(&i["encoder_hidden_states"].narrow(0, b, 1).unwrap()))
        .collect();
    dit.forward(
        &on(&i["hidden_states"]),
        &t,
        &r,
        &states,
        &on(&i["context_latents"]),
    )
    .unwrap()
    .to_device(&Device::Cpu)
    .unwrap()
}

/// DiT and VAE decoder on the GPU in f32 match the reference outputs like the CPU does.
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_parity_f32() {
    let dev = gpu();
    let files = ModelFiles::discover(&original(), None).unwrap();
    let r = load("reference.safetensors");
    let dit = Dit::load(&files.open_dit(&dev).unwrap(), &dit_config(&files)).unwrap();
    for (inp, out) in [
        ("dit_inputs.safetensors", "dit_out"),
        ("dit_inputs_r.safetensors", "dit_out_r"),
    ] {
        check(
            &format!("gpu {out}"),
            &run_dit(&dit, &dev, inp),
            &r[out],
            BOUND,
        );
    }
    let vj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.vae_config).unwrap()).unwrap();
    let vcfg = VaeConfig::from_json(&vj, &files.vae_config).unwrap();
    let dec = VaeDecoder::load(&files.open_vae(&dev).unwrap(), &vcfg).unwrap();
    let lat = load("vae_decode_inputs.safetensors")["latents"]
        .to_device(&dev)
        .unwrap();
    let audio = dec.forward(&lat).unwrap().to_device(&Device::Cpu).unwrap();
    check("gpu vae decode", &audio, &r["vae_decoded"], BOUND);
}

/// bf16 matrix products (f32 accumulation) stay close to the f32 result: relative to the
/// output's scale, within bf16's resolution (8 mantissa bits) compounded over the layers.
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_bf16_matmuls_stay_close() {
    let dev = gpu();
    let files = ModelFiles::discover(&original(), None).unwrap();
    let cfg = dit_config(&files);
    let f32_out = run_dit(
        &Dit::load(&files.open_dit(&dev).unwrap(), &cfg).unwrap(),
        &dev,
        "dit_inputs.safetensors",
    );
    let mut dit = Dit::load(&files.open_dit(&dev).unwrap(), &cfg).unwrap();
    dit.set_matmul_dtype(Some(DType::BF16)).unwrap();
    let bf16_out = run_dit(&dit, &dev, "dit_inputs.safetensors");
    let scale = f32_out
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(&bf16_out, &f32_out);
    println!("PARITY gpu bf16 vs f32: max abs diff {d:.3e} (scale {scale:.3e})");
    assert!(
        d <= 5e-2 * scale.max(1.0),
        "bf16 drifted: {d} at scale {scale}"
    );
}

/// The denoiser contract on the GPU: a row's bits do not depend on the batch.
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_rows_are_independent_of_the_batch() {
    let dev = gpu();
    let m = AceStep::load(&original(), &dev).unwrap();
    let (mut den, _, _) = m.into_parts();
    let frames = 11;
    let conds: Vec<Conditioning> = (0..4)
        .map(|i| {
            Conditioning::new(Tensor::randn(0f32, 1.0, (1, 3 + 2 * i, 32), &dev).unwrap()).unwrap()
        })
        .collect();
    let ctxs: Vec<Tensor> = (0..4)
        .map(|_| Tensor::randn(0f32, 1.0, (1, frames, 16), &dev).unwrap())
        .collect();
    let xs: Vec<Tensor> = (0..4)
        .map(|_| Tensor::randn(0f32, 1.0, (1, frames, 8), &dev).unwrap())
        .collect();
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    let run = |den: &mut dyn Denoiser, rows: &[usize]| {
        let x = Tensor::cat(&rows.iter().map(|&i| &xs[i]).collect::<Vec<_>>(), 0).unwrap();
        den.velocity(&DenoiseBatch {
            x,
            t: rows.iter().map(|&i| 1.0 - 0.2 * i as f32).collect(),
            conditions: rows.iter().map(|&i| &conds[i]).collect(),
            contexts: rows.iter().map(|&i| &ctxs[i]).collect(),
            sources: Vec::new(),
        })
        .unwrap()
    };
    let alone: Vec<Vec<u32>> = (0..4).map(|i| bits(&run(&mut den, &[i]))).collect();
    for b in 2..=4 {
        let rows: Vec<usize> = (0..b).map(|k| (k + b) % 4).collect();
        let v = run(&mut den, &rows);
        for (k, &i) in rows.iter().enumerate() {
            assert_eq!(
                bits(&v.narrow(0, k, 1).unwrap()),
                alone[i],
                "batch {b} row {k}"
            );
        }
    }
}
