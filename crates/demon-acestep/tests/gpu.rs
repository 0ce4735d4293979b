//! GPU checks (issues #6 and #14). Every test is ignored by default, so `cargo test` lists them
//! as ignored on any machine; `scripts/gpu-run.sh` runs the carried test binary (built with
//! `--features cuda`) with `--include-ignored`. Run that way, a test fails with "no CUDA device"
//! when there is none (a build without `--features cuda` has none). Their `PARITY`, `ROWS` and
//! `OPS` lines are what gpu-run.sh's summary collects.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use demon_acestep::AceStep;
use demon_acestep::bench::parse_device;
use demon_acestep::config::{DitConfig, VaeConfig};
use demon_acestep::dit::Dit;
use demon_acestep::dit::Row;
use demon_acestep::dit::composed::{Tables, profile::tensor_serial};
use demon_acestep::vae::VaeDecoder;
use demon_acestep::weights::ModelFiles;
use demon_engine::{Conditioning, DenoiseBatch, Denoiser};

/// The same bound as the CPU parity tests.
const BOUND: f32 = 1e-4;
/// bf16 products against f32, relative to the output's scale.
const BF16_REL: f32 = 2e-2;

fn gpu() -> Device {
    match parse_device("cuda") {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

fn dit_config(files: &ModelFiles) -> DitConfig {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.dit_config).unwrap()).unwrap();
    DitConfig::from_original_json(&v, &files.dit_config).unwrap()
}

fn scale_of(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The fixture DiT inputs on `dev`: x, context, t, r, per-row states.
struct DitInputs {
    x: Tensor,
    ctx: Tensor,
    t: Vec<f32>,
    r: Vec<f32>,
    states: Vec<Tensor>,
}

fn dit_inputs(dev: &Device, name: &str) -> DitInputs {
    let i = load(name);
    let on = |t: &Tensor| t.to_device(dev).unwrap();
    let b = i["hidden_states"].dim(0).unwrap();
    DitInputs {
        x: on(&i["hidden_states"]),
        ctx: on(&i["context_latents"]),
        t: i["timestep"].to_vec1().unwrap(),
        r: i["timestep_r"].to_vec1().unwrap(),
        states: (0..b)
            .map(|k| on(&i["encoder_hidden_states"].narrow(0, k, 1).unwrap()))
            .collect(),
    }
}

/// The whole fixture batch in one composed call (the denoiser's GPU path) → `[B, T, C]` on the
/// CPU.
fn run_batched(dit: &Dit, inp: &DitInputs) -> Tensor {
    let kvs: Vec<_> = inp
        .states
        .iter()
        .map(|s| dit.cross_kv(s, None).unwrap())
        .collect();
    let xs: Vec<Tensor> = (0..kvs.len())
        .map(|k| inp.x.narrow(0, k, 1).unwrap())
        .collect();
    let ctxs: Vec<Tensor> = (0..kvs.len())
        .map(|k| inp.ctx.narrow(0, k, 1).unwrap())
        .collect();
    let rows: Vec<Row<'_>> = (0..kvs.len())
        .map(|k| Row {
            x: &xs[k],
            context: &ctxs[k],
            t: inp.t[k],
            t_minus_r: inp.t[k] - inp.r[k],
            kv: &kvs[k],
        })
        .collect();
    dit.forward_batch_composed(&mut Tables::default(), &rows)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
}

/// DiT (row by row and as one batch) and the VAE decoder on the GPU in f32 match the reference
/// outputs as the CPU does.
#[test]
#[ignore = "needs a CUDA device (scripts/gpu-run.sh)"]
fn gpu_parity_f32() {
    let dev = gpu();
    let files = ModelFiles::discover(&original(), None).unwrap();
    let r = load("reference.safetensors");
    let dit = Dit::load(&files.open_dit(&dev).unwrap(), &dit_config(&files)).unwrap();
    for (inp, out) in [
        ("dit_inputs.safetensors", "dit_out"),
        ("dit_inputs_r.safetensors", "dit_out_r"),
    ] {
        let i = dit_inputs(&dev, inp);
        let rows = dit
            .forward(&i.x, &i.t, &i.r, &i.states, &i.ctx)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        check(&format!("gpu f32 {out} (rows)"), &rows, &r[out], BOUND);
        check(
            &format!("gpu f32 {out} (batch)"),
            &run_batched(&dit, &i),
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
    check("gpu f32 vae decode", &audio, &r["vae_decoded"], BOUND);
}

/// bf16 products (f32 accumulation, bf16 attention) stay within 2e-2 of the f32 result,
/// relative to the output's scale.
#[test]
#[ignore = "needs a CUDA device (scripts/gpu-run.sh)"]
fn gpu_bf16_stays_close_to_f32() {
    let dev = gpu();
    let files = ModelFiles::discover(&original(), None).unwrap();
    let cfg = dit_config(&files);
    let i = dit_inputs(&dev, "dit_inputs.safetensors");
    let f32_out = run_batched(
        &Dit::load(&files.open_dit(&dev).unwrap(), &cfg).unwrap(),
        &i,
    );
    let mut dit = Dit::load(&files.open_dit(&dev).unwrap(), &cfg).unwrap();
    dit.set_matmul_dtype(Some(DType::BF16)).unwrap();
    let bf16_out = run_batched(&dit, &i);
    let scale = scale_of(&f32_out).max(1.0);
    let rel = max_abs_diff(&bf16_out, &f32_out) / scale;
    println!(
        "PARITY gpu bf16 vs f32: max abs diff {rel:.3e} of the output scale (bound {BF16_REL:.0e})"
    );
    assert!(rel > 0.0, "the bf16 path did not run");
    assert!(rel <= BF16_REL, "bf16 drifted: {rel}");
}

/// Rows on the GPU: the same row alone and in batches of 2, 3 and 4 (positions rotated, mixed
/// conditionings and a shared one). The batch runs as strided-batched products with one GEMM per
/// row, so the bits match unless cuBLAS picks another kernel for another batch count: reported as
/// a `ROWS` line (max difference and differing values), asserted only within the f32 bound.
#[test]
#[ignore = "needs a CUDA device (scripts/gpu-run.sh)"]
fn gpu_rows_across_batch_sizes() {
    let dev = gpu();
    for dtype in [None, Some(DType::BF16)] {
        let m = AceStep::load(&original(), &dev).unwrap();
        let (mut den, _, _) = m.into_parts();
        den.set_matmul_dtype(dtype).unwrap();
        let frames = 11;
        let mut conds: Vec<Conditioning> = (0..3)
            .map(|i| {
                Conditioning::new(Tensor::randn(0f32, 1.0, (1, 3 + 2 * i, 32), &dev).unwrap())
                    .unwrap()
            })
            .collect();
        conds.push(conds[0].clone()); // row 3 shares row 0's conditioning
        let ctxs: Vec<Tensor> = (0..4)
            .map(|_| Tensor::randn(0f32, 1.0, (1, frames, 16), &dev).unwrap())
            .collect();
        let xs: Vec<Tensor> = (0..4)
            .map(|_| Tensor::randn(0f32, 1.0, (1, frames, 8), &dev).unwrap())
            .collect();
        let run = |den: &mut dyn Denoiser, rows: &[usize]| -> Tensor {
            let x = Tensor::cat(&rows.iter().map(|&i| &xs[i]).collect::<Vec<_>>(), 0).unwrap();
            den.velocity(&DenoiseBatch {
                x,
                t: rows.iter().map(|&i| 1.0 - 0.2 * i as f32).collect(),
                conditions: rows.iter().map(|&i| &conds[i]).collect(),
                contexts: rows.iter().map(|&i| &ctxs[i]).collect(),
                sources: Vec::new(),
            })
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
        };
        let alone: Vec<Tensor> = (0..4).map(|i| run(&mut den, &[i])).collect();
        let (mut max, mut differing, mut compared) = (0f32, 0usize, 0usize);
        for b in 2..=4 {
            let rows: Vec<usize> = (0..b).map(|k| (k + b) % 4).collect();
            let v = run(&mut den, &rows);
            for (k, &i) in rows.iter().enumerate() {
                let got = v.narrow(0, k, 1).unwrap();
                max = max.max(max_abs_diff(&got, &alone[i]));
                let (a, w): (Vec<f32>, Vec<f32>) = (
                    got.flatten_all().unwrap().to_vec1().unwrap(),
                    alone[i].flatten_all().unwrap().to_vec1().unwrap(),
                );
                differing += a
                    .iter()
                    .zip(&w)
                    .filter(|(x, y)| x.to_bits() != y.to_bits())
                    .count();
                compared += 1;
            }
        }
        let name = format!("{:?}", dtype.unwrap_or(DType::F32)).to_lowercase();
        println!(
            "ROWS gpu {name}: {compared} rows in batches of 2-4 against alone: max abs diff {max:.3e}, {differing} differing values ({})",
            if differing == 0 {
                "bit-identical"
            } else {
                "not bit-identical"
            }
        );
        let scale = alone.iter().map(scale_of).fold(1f32, f32::max);
        assert!(
            max <= BOUND * scale,
            "{name}: rows depend on the batch: {max}"
        );
    }
}

/// Tensor ops (an upper bound of kernel launches) of one composed DiT call on the fixture model,
/// per layer.
#[test]
#[ignore = "needs a CUDA device (scripts/gpu-run.sh)"]
fn gpu_ops_per_call() {
    let dev = gpu();
    let files = ModelFiles::discover(&original(), None).unwrap();
    let cfg = dit_config(&files);
    let dit = Dit::load(&files.open_dit(&dev).unwrap(), &cfg).unwrap();
    let i = dit_inputs(&dev, "dit_inputs.safetensors");
    run_batched(&dit, &i); // warm-up
    let before = tensor_serial();
    run_batched(&dit, &i);
    let ops = tensor_serial() - before;
    println!(
        "OPS composed DiT, batch {}, {} layers: {ops} tensor ops per call (views included), {:.0} per layer",
        i.states.len(),
        cfg.num_hidden_layers,
        ops as f64 / cfg.num_hidden_layers as f64
    );
    assert!(ops > 0);
}

/// A device that cannot be opened is one clean line naming it, without a backtrace, also with
/// `RUST_BACKTRACE` set (runs without a GPU too: ordinal 999 never exists). In a build without
/// the `cuda` feature the line says how to get a CUDA build instead.
#[test]
fn a_missing_device_is_one_clean_line() {
    // SAFETY: set before this test opens a device; candle reads it when it builds the error.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    let e = parse_device("cuda:999").expect_err("no machine has 1000 GPUs");
    let msg = e.to_string();
    println!("cuda:999 → {msg}");
    if cfg!(feature = "cuda") {
        assert!(msg.starts_with("no CUDA device: cuda:999"), "{msg}");
    } else {
        assert!(msg.contains("built without CUDA"), "{msg}");
        assert!(
            msg.contains("--features cuda") && msg.contains("scripts/gpu-bundle.sh"),
            "{msg}"
        );
    }
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(!msg.contains("backtrace"), "{msg}");
}
