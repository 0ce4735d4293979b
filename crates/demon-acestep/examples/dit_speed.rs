//! Times our DiT forward on weights and inputs written by `tools/cpu-vs-pytorch/bench.py`, so the
//! script can alternate it with PyTorch's forward on the same model in one run.
//!
//! ```text
//! dit_speed TRANSFORMER_DIR INPUTS.safetensors [f32|bf16]
//! ```
//! `TRANSFORMER_DIR` is a diffusers `AceStepTransformer1DModel.save_pretrained` folder
//! (`config.json`, `diffusion_pytorch_model.safetensors`); the inputs file holds
//! `hidden_states` `[B, T, C]`, `context_latents` `[B, T, Cc]`, `encoder_hidden_states`
//! `[B, L, H_enc]` and `timestep` `[B]`. Then, one command per line on stdin:
//! - `time B`: one `Denoiser::velocity` call on the first `B` rows (after a warm-up call at
//!   the first use of `B`, which fills the cross-attention cache and the workspace), printing
//!   `{"batch": B, "ms": …}`;
//! - `dump B FILE`: the velocity of the first `B` rows into `FILE` (`velocity` `[B, T, C]`);
//! - `quit`.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use demon_acestep::AceStepDenoiser;
use demon_acestep::DitConfig;
use demon_acestep::weights::{ComponentWeights, diffusers_to_original};
use demon_engine::{Conditioning, DenoiseBatch, Denoiser};
use serde_json::Value;

/// The decoder fields of a diffusers transformer `config.json`.
fn dit_config(path: &Path) -> Result<DitConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let int = |k: &str| -> Result<usize> {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| anyhow!("{}: no integer `{k}`", path.display()))
    };
    let float = |k: &str| -> Result<f64> {
        v.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("{}: no number `{k}`", path.display()))
    };
    let layers = int("num_hidden_layers")?;
    let sliding_layers = match v.get("layer_types").and_then(Value::as_array) {
        Some(t) => t
            .iter()
            .map(|s| s.as_str() == Some("sliding_attention"))
            .collect(),
        None => (0..layers).map(|i| i % 2 == 0).collect(),
    };
    let mut cfg = DitConfig::turbo_2b();
    cfg.hidden_size = int("hidden_size")?;
    cfg.intermediate_size = int("intermediate_size")?;
    cfg.num_hidden_layers = layers;
    cfg.num_attention_heads = int("num_attention_heads")?;
    cfg.num_key_value_heads = int("num_key_value_heads")?;
    cfg.head_dim = int("head_dim")?;
    cfg.rope_theta = float("rope_theta")?;
    cfg.rms_norm_eps = float("rms_norm_eps")?;
    cfg.sliding_window = int("sliding_window")?;
    cfg.sliding_layers = sliding_layers;
    cfg.in_channels = int("in_channels")?;
    cfg.audio_acoustic_hidden_dim = int("audio_acoustic_hidden_dim")?;
    cfg.patch_size = int("patch_size")?;
    cfg.encoder.hidden_size = int("encoder_hidden_size")?;
    Ok(cfg)
}

struct Inputs {
    x: Tensor,
    context: Tensor,
    states: Tensor,
    t: Vec<f32>,
}

fn main() -> Result<()> {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: set before any other thread exists (as `demon` does).
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, inputs) = match args.as_slice() {
        [d, i] | [d, i, _] => (PathBuf::from(d), PathBuf::from(i)),
        _ => bail!("usage: dit_speed TRANSFORMER_DIR INPUTS.safetensors [f32|bf16]"),
    };
    let precision = args.get(2).map_or("f32", String::as_str);
    let dev = Device::Cpu;
    let cfg = dit_config(&dir.join("config.json"))?;
    let weights = ComponentWeights::open(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &dev,
        &|name| Some(diffusers_to_original("decoder.", name)),
    )?;
    let mut den = AceStepDenoiser::from_source(&weights, &cfg)?;
    den.set_cpu_precision(precision.parse().map_err(|e: String| anyhow!(e))?)?;
    drop(weights);
    let file = demon_acestep::weights::SafetensorsFile::open(&inputs)?;
    let get = |n: &str| file.load(n, &dev).with_context(|| format!("input `{n}`"));
    let inp = Inputs {
        x: get("hidden_states")?,
        context: get("context_latents")?,
        states: get("encoder_hidden_states")?,
        t: get("timestep")?.to_vec1()?,
    };
    let rows = inp.x.dim(0)?;
    let conds: Vec<Conditioning> = (0..rows)
        .map(|i| Ok(Conditioning::new(inp.states.narrow(0, i, 1)?)?))
        .collect::<Result<_>>()?;
    let contexts: Vec<Tensor> = (0..rows)
        .map(|i| inp.context.narrow(0, i, 1))
        .collect::<candle_core::Result<_>>()?;
    let mut warmed = HashSet::new();
    let mut run = |b: usize| -> Result<Tensor> {
        if b == 0 || b > rows {
            bail!("batch {b}: the inputs have {rows} rows");
        }
        let batch = DenoiseBatch {
            x: inp.x.narrow(0, 0, b)?,
            t: inp.t[..b].to_vec(),
            conditions: conds[..b].iter().collect(),
            contexts: contexts[..b].iter().collect(),
            sources: Vec::new(),
        };
        Ok(den.velocity(&batch)?)
    };
    let stdout = std::io::stdout();
    println!("{{\"ready\": true, \"precision\": \"{precision}\"}}");
    stdout.lock().flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["time", b] => {
                let b: usize = b.parse().context("batch")?;
                if warmed.insert(b) {
                    run(b)?;
                }
                let t = Instant::now();
                run(b)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                println!("{{\"batch\": {b}, \"ms\": {ms}}}");
            }
            ["dump", b, path] => {
                let v = run(b.parse().context("batch")?)?;
                candle_core::safetensors::save(
                    &std::collections::HashMap::from([("velocity".to_string(), v)]),
                    path,
                )?;
                println!("{{\"dumped\": \"{path}\"}}");
            }
            ["quit"] | [] => break,
            other => bail!("unknown command {other:?}"),
        }
        stdout.lock().flush()?;
    }
    Ok(())
}
