//! Model-side benchmark for `demon bench --backend acestep` (issue #6): the machine's f32 matmul
//! rate, one DiT step per model size × song length × batch, the VAE decode time per second of
//! audio, the achieved share of the matmul rate ("roofline share"), and a check that every row's
//! velocity is byte-identical whatever batch it runs in.
//!
//! ```no_run
//! use demon_acestep::bench::{ModelBenchConfig, model_bench};
//! let report = model_bench(&ModelBenchConfig::default(), &mut |m| eprintln!("{m}"))?;
//! println!("{}", serde_json::to_string_pretty(&report).unwrap());
//! # Ok::<(), demon_acestep::AceStepError>(())
//! ```
//!
//! FLOPs are counted by [`dit_step_flops`] and [`vae_decode_flops`]: matrix products and
//! convolutions only, a multiply-add counted as 2 FLOPs, and only the work the model needs (a
//! sliding-window layer's attention counts the keys inside the band). Element-wise work (norms,
//! Snake, softmax) is not counted: it is what the kernels should hide, so it lowers the share.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use demon_engine::{Conditioning, DenoiseBatch, Denoiser};
use serde::Serialize;

use crate::codec::AceStepCodec;
use crate::config::{DitConfig, VaeConfig};
use crate::denoiser::AceStepDenoiser;
use crate::error::{AceStepError, Result};
use crate::gemm::Precision;
use crate::weights::ModelFiles;

/// A published model size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelSize {
    #[serde(rename = "turbo-2b")]
    /// 2B turbo (`acestep-v15-turbo`).
    Turbo2b,
    /// 5B XL turbo (`acestep-v15-xl-turbo`).
    XlTurbo,
}

impl ModelSize {
    /// The report key: `turbo-2b` or `xl-turbo`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Turbo2b => "turbo-2b",
            Self::XlTurbo => "xl-turbo",
        }
    }

    pub fn dit_config(self) -> DitConfig {
        match self {
            Self::Turbo2b => DitConfig::turbo_2b(),
            Self::XlTurbo => DitConfig::xl_turbo(),
        }
    }

    /// The DiT folder of the original layout (for real weights).
    pub fn variant(self) -> &'static str {
        match self {
            Self::Turbo2b => "acestep-v15-turbo",
            Self::XlTurbo => "acestep-v15-xl-turbo",
        }
    }
}

impl std::str::FromStr for ModelSize {
    type Err = AceStepError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "turbo-2b" | "2b" | "turbo" => Ok(Self::Turbo2b),
            "xl-turbo" | "xl" | "5b" => Ok(Self::XlTurbo),
            other => Err(AceStepError::input(format!(
                "model size `{other}`: use turbo-2b or xl-turbo"
            ))),
        }
    }
}

/// One measured DiT configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DitCase {
    pub size: ModelSize,
    /// Song length in seconds (25 latent frames per second).
    pub seconds: u32,
    /// Rows per `velocity` call.
    pub batch: usize,
}

/// What [`model_bench`] measures.
#[derive(Clone, Debug)]
pub struct ModelBenchConfig {
    /// Weights folder (`AceStep::load_variant`); `None` for random weights of the published
    /// shapes (no files needed).
    pub weights: Option<PathBuf>,
    /// DiT steps to time. Cases of one size share one model instance.
    pub dit_cases: Vec<DitCase>,
    /// Audio seconds of the VAE decode (0 skips it).
    pub vae_seconds: f32,
    /// Timed repetitions per case after one warm-up call; the best is reported.
    pub repeats: usize,
    /// Packed conditioning length (text + lyric + timbre tokens); acestep.md §7 uses 400.
    pub enc_len: usize,
    /// Compare every row's output bytes across the batch sizes it was measured in.
    pub check_rows: bool,
    /// Device; `Device::Cpu` unless built with the `cuda` feature.
    pub device: Device,
    /// GPU mixed precision of the DiT's products ([`AceStepDenoiser::set_matmul_dtype`]);
    /// `None`: f32. Ignored by the CPU kernels.
    pub matmul_dtype: Option<DType>,
    /// Weight precision of the CPU kernels ([`AceStepDenoiser::set_cpu_precision`]); CPU only.
    pub cpu_precision: Precision,
    pub seed: u64,
    /// Rank of the random adapter whose strength change is timed on the 2B DiT (0 skips it).
    pub lora_rank: usize,
}

impl Default for ModelBenchConfig {
    /// The subset a 2-core CPU finishes in minutes: 2B at 10 s for batches 1, 2, 4, 8 and at
    /// 60 s for batch 1; XL at 10 s batch 1; a 10 s VAE decode; best of 2.
    fn default() -> Self {
        let mut dit_cases: Vec<DitCase> = [1, 2, 4, 8]
            .into_iter()
            .map(|batch| DitCase {
                size: ModelSize::Turbo2b,
                seconds: 10,
                batch,
            })
            .collect();
        dit_cases.push(DitCase {
            size: ModelSize::Turbo2b,
            seconds: 60,
            batch: 1,
        });
        dit_cases.push(DitCase {
            size: ModelSize::XlTurbo,
            seconds: 10,
            batch: 1,
        });
        Self {
            weights: None,
            dit_cases,
            vae_seconds: 10.0,
            repeats: 2,
            enc_len: 400,
            check_rows: true,
            device: Device::Cpu,
            matmul_dtype: None,
            cpu_precision: Precision::F32,
            seed: 0,
            lora_rank: 16,
        }
    }
}

impl ModelBenchConfig {
    /// Every size × {10, 60, 240} s × batch {1, 2, 4, 8} (for a GPU; hours on a 2-core CPU).
    pub fn full() -> Self {
        let mut dit_cases = Vec::new();
        for size in [ModelSize::Turbo2b, ModelSize::XlTurbo] {
            for seconds in [10, 60, 240] {
                for batch in [1, 2, 4, 8] {
                    dit_cases.push(DitCase {
                        size,
                        seconds,
                        batch,
                    });
                }
            }
        }
        Self {
            dit_cases,
            ..Self::default()
        }
    }

    /// The cases of `sizes` × `seconds` × `batches`.
    pub fn with_cases(sizes: &[ModelSize], seconds: &[u32], batches: &[usize]) -> Self {
        let mut dit_cases = Vec::new();
        for &size in sizes {
            for &s in seconds {
                for &batch in batches {
                    dit_cases.push(DitCase {
                        size,
                        seconds: s,
                        batch,
                    });
                }
            }
        }
        Self {
            dit_cases,
            ..Self::default()
        }
    }
}

/// Per size → song seconds → batch, e.g. `dit_step_ms["turbo-2b"]["60"]["1"]`.
pub type CaseMap<T> = BTreeMap<String, BTreeMap<String, BTreeMap<String, T>>>;

/// The outcome of the per-row byte comparison: each row's output in a batch against the same
/// row's output in another batch size (or alone, when the bench measured one batch size only).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RowCheck {
    /// `true` when at least one row was compared.
    pub checked: bool,
    /// Every compared row had the same bytes in every batch; `None` when nothing was compared
    /// (a batch-1-only run has nothing to compare against).
    pub identical: Option<bool>,
    /// Row outputs compared against the same row's output in another batch.
    pub rows_compared: usize,
    /// Differing values over all compared rows (0 when identical).
    pub differing_values: usize,
}

impl RowCheck {
    /// Count the comparison of one row's output bits against another batch's.
    fn compare(&mut self, want: &[u32], got: &[u32]) {
        self.checked = true;
        self.rows_compared += 1;
        self.differing_values +=
            want.iter().zip(got).filter(|(a, b)| a != b).count() + want.len().abs_diff(got.len());
        self.identical = Some(self.differing_values == 0);
    }
}

/// What [`model_bench`] returns; serialised into `demon bench --json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ModelBenchReport {
    /// Best of several large f32 matmuls on this device (GFLOP/s).
    pub matmul_gflops: f64,
    /// One denoiser step (`Denoiser::velocity` on a batch), best of the repeats, in ms.
    pub dit_step_ms: CaseMap<f64>,
    /// Process CPU time (all threads, user + system) during that best step, in ms: about
    /// `threads × dit_step_ms` on an idle machine, less when other processes took cores.
    pub dit_step_cpu_ms: CaseMap<f64>,
    /// FLOPs of one step of that case (see [`dit_step_flops`]), in GFLOP.
    pub dit_step_gflop: CaseMap<f64>,
    /// Tensors candle created during one step (kernel outputs and views: an upper bound of the
    /// kernel launches; few on the CPU's fused path, every op on the composed GPU path).
    pub dit_step_tensor_ops: CaseMap<usize>,
    /// Achieved rate ÷ `matmul_gflops`, per case.
    pub dit_roofline_share_by_case: CaseMap<f64>,
    /// The headline share: 2B, 60 s, batch 1 when measured, else the measured case with the
    /// most FLOPs.
    pub dit_roofline_share: f64,
    /// Which case `dit_roofline_share` is.
    pub dit_roofline_case: Option<DitCase>,
    /// VAE decode wall time per second of audio (ms); `None` when not measured.
    pub vae_decode_ms_per_audio_second: Option<f64>,
    pub vae_decode_seconds: f32,
    pub vae_decode_gflop: f64,
    pub vae_roofline_share: Option<f64>,
    /// Per-row outputs byte-identical across batch sizes; `None` when no row was compared.
    pub rows_identical_across_batches: Option<bool>,
    pub row_check: RowCheck,
    /// Wall time to build each model instance (s), by size (and `vae`).
    pub load_seconds: BTreeMap<String, f64>,
    /// Peak resident memory of the process while each phase ran (the model instance of a size,
    /// built and stepped; `vae`: the codec built and decoding), in MiB, from the kernel's
    /// high-water mark (`VmHWM`), reset before each phase when the kernel allows it.
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// `true` when the high-water mark was reset before each phase (so each figure is that
    /// phase's own peak); `false`: each is the process peak up to the end of that phase.
    pub peak_rss_per_phase: bool,
    /// Bytes held by each DiT's linear-layer weights (by size; on the CPU the packed panels, the
    /// only copy kept), and by the VAE decoder's convolution weights (`vae`).
    pub weight_bytes: BTreeMap<String, usize>,
    /// Weight precision of the CPU kernels (`f32` or `bf16`; `f32` off the CPU).
    pub cpu_precision: String,
    /// Instruction set of the CPU GEMM kernels (`Avx512`, `Avx2`, `Portable`) and whether bf16
    /// products run natively (`vdpbf16ps`).
    pub cpu_isa: String,
    pub cpu_bf16_native: bool,
    pub device: String,
    pub threads: usize,
    /// `random` or the weights folder.
    pub weights: String,
    /// Dtype of the DiT's matrix products (`F32` unless set for a GPU).
    pub matmul_dtype: String,
    pub repeats: usize,
    pub enc_len: usize,
    /// What a LoRA strength change costs on the 2B DiT; `None` when not measured.
    pub lora_change: Option<LoraChangeReport>,
}

/// The cost of one LoRA strength change (issue 12, item 2): a random adapter of `rank` on every
/// attention projection (self and cross: q, k, v, o) of every decoder layer, moved from one
/// strength to another through `demon_engine::Adapters::set_strength`, as the live session
/// does. Best of the repeats.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoraChangeReport {
    pub rank: usize,
    /// Linear layers the adapter touches.
    pub modules: usize,
    /// One strength change: one merge of every touched module from its base weight, in ms.
    pub change_ms: f64,
    /// The same change by the path `set_strength` took before (disable, set the strength,
    /// enable: three merges), in ms.
    pub three_merge_ms: f64,
}

/// Measure [`LoraChangeReport`] on `den` (which keeps the adapter afterwards, at 0).
fn lora_change(
    den: &mut AceStepDenoiser,
    rank: usize,
    repeats: usize,
    dev: &Device,
) -> Result<LoraChangeReport> {
    use demon_engine::Adapters;
    let layers = den.config().num_hidden_layers;
    let mut modules = std::collections::BTreeMap::new();
    for layer in 0..layers {
        for block in ["self_attn", "cross_attn"] {
            for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                let name = format!("decoder.layers.{layer}.{block}.{proj}");
                let Some((out, inp)) = den.linear_dims(&name) else {
                    continue;
                };
                let a = Tensor::randn(0f32, 0.02, (rank, inp), dev)?;
                let b = Tensor::randn(0f32, 0.02, (out, rank), dev)?;
                modules.insert(name, crate::lora::LoraModule { a, b, scale: 1.0 });
            }
        }
    }
    let touched = modules.len();
    let id = den.add_lora_adapter(
        crate::lora::LoraAdapter {
            path: PathBuf::from("bench-random-lora"),
            modules,
            metadata: Default::default(),
        },
        1.0,
    )?;
    let name = den.list()[id].id.clone();
    let (mut change, mut three) = (f64::INFINITY, f64::INFINITY);
    for k in 0..repeats {
        let strength = if k % 2 == 0 { 0.5 } else { 0.75 };
        let t = Instant::now();
        den.set_strength(&name, strength)
            .map_err(|e| AceStepError::input(e.to_string()))?;
        change = change.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        den.set_lora_enabled(id, false)?;
        den.set_lora_strength(id, strength + 0.1)?;
        den.set_lora_enabled(id, true)?;
        three = three.min(t.elapsed().as_secs_f64());
    }
    den.set_strength(&name, 0.0)
        .map_err(|e| AceStepError::input(e.to_string()))?;
    Ok(LoraChangeReport {
        rank,
        modules: touched,
        change_ms: change * 1e3,
        three_merge_ms: three * 1e3,
    })
}

/// FLOPs of one DiT step for one row of `frames` latent frames and a packed conditioning of
/// `enc_len` tokens (cross-attention keys/values are cached per conditioning, so not counted):
///
/// per layer, with `S = ⌈frames/patch⌉`, `H` hidden, `Q = heads·D`, `KV = kv_heads·D`, `I` MLP:
/// `2S(H·Q + 2H·KV + Q·H)` self projections + `4·Q·Σᵢ keysᵢ` self attention (`keysᵢ = S`, or
/// the `|i − j| ≤ window` band on sliding layers) + `2S(H·Q + Q·H) + 4·S·L·Q` cross attention +
/// `6·S·H·I` MLP; plus the patch convs `2S·(patch·Cin)·H + 2S·H·(patch·C)`. The timestep
/// embedders (< 0.1 GFLOP) are left out.
pub fn dit_step_flops(cfg: &DitConfig, frames: usize, enc_len: usize) -> f64 {
    let s = frames.div_ceil(cfg.patch_size.max(1));
    let sf = s as f64;
    let h = cfg.hidden_size as f64;
    let q = (cfg.num_attention_heads * cfg.head_dim) as f64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as f64;
    let i = cfg.intermediate_size as f64;
    let l = enc_len as f64;
    let w = cfg.sliding_window;
    let band_keys: f64 = (0..s)
        .map(|r| ((r + w + 1).min(s) - r.saturating_sub(w)) as f64)
        .sum();
    let full_keys = sf * sf;
    let mut total = 0.0;
    for layer in 0..cfg.num_hidden_layers {
        let sliding = cfg
            .sliding_layers
            .get(layer)
            .copied()
            .unwrap_or(layer % 2 == 0);
        let keys = if sliding { band_keys } else { full_keys };
        total += 2.0 * sf * (h * q + 2.0 * h * kv + q * h)
            + 4.0 * q * keys
            + 2.0 * sf * (h * q + q * h)
            + 4.0 * sf * l * q
            + 6.0 * sf * h * i;
    }
    total
        + 2.0 * sf * (cfg.patch_size * cfg.in_channels) as f64 * h
        + 2.0 * sf * h * (cfg.patch_size * cfg.audio_acoustic_hidden_dim) as f64
}

/// FLOPs of a VAE decode of `frames` latent frames: every convolution counts
/// `2·Cin·Cout·k·L_in` (transposed: every input sample meets every tap) or `2·Cin·Cout·k·L_out`
/// (forward); Snake and the residual additions are not counted.
pub fn vae_decode_flops(cfg: &VaeConfig, frames: usize) -> f64 {
    let ch = cfg.decoder_channels as f64;
    let mut mults = vec![1usize];
    mults.extend(&cfg.channel_multiples);
    let n = cfg.downsampling_ratios.len();
    let mut len = frames as f64;
    let top = ch * mults[n] as f64;
    let mut f = 2.0 * top * cfg.decoder_input_channels as f64 * 7.0 * len;
    for (b, &s) in cfg.downsampling_ratios.iter().rev().enumerate() {
        let cin = ch * mults[n - b] as f64;
        let cout = ch * mults[n - b - 1] as f64;
        f += 2.0 * cin * cout * (2 * s) as f64 * len;
        len *= s as f64;
        // Three residual units: kernel-7 conv + kernel-1 conv.
        f += 3.0 * (2.0 * cout * cout * 7.0 * len + 2.0 * cout * cout * len);
    }
    f + 2.0 * ch * cfg.audio_channels as f64 * 7.0 * len
}

/// Best of `repeats` runs of a `[m, k] × [k, n]` f32 matmul on `device`, in GFLOP/s.
pub fn matmul_rate(
    device: &Device,
    (m, k, n): (usize, usize, usize),
    repeats: usize,
) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (m, k), device)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), device)?;
    a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?; // warm-up (and, on a GPU, synchronise)
    let mut best = f64::MAX;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        sync(&c)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// The machine's f32 matmul rate: the best of a square power-of-two, a square
/// non-power-of-two and the XL MLP's shape at 60 s.
pub fn machine_matmul_gflops(device: &Device, repeats: usize) -> Result<f64> {
    let mut best = 0f64;
    for shape in [(2048, 2048, 2048), (3000, 3000, 3000), (750, 2560, 9728)] {
        best = best.max(matmul_rate(device, shape, repeats)?);
    }
    Ok(best)
}

/// CPU time of this process so far (user + system, all threads), from `/proc/self/stat`
/// (Linux; `None` elsewhere).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Peak resident set size of this process so far in MiB (`VmHWM` of `/proc/self/status`, what
/// `getrusage`'s `ru_maxrss` reports; Linux, `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Reset the peak-RSS high-water mark to the current RSS (writing 5 to `/proc/self/clear_refs`,
/// Linux ≥ 4.0). Returns whether the kernel took it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Wait until `t` is computed (GPU kernels run asynchronously).
fn sync(t: &Tensor) -> Result<()> {
    Ok(t.device().synchronize()?)
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::to_bits)
        .collect())
}

fn insert<T>(map: &mut CaseMap<T>, case: &DitCase, v: T) {
    map.entry(case.size.key().to_string())
        .or_default()
        .entry(case.seconds.to_string())
        .or_default()
        .insert(case.batch.to_string(), v);
}

/// The files of `size` under `dir`: the original layout's DiT folder of that size, or (2B only)
/// whatever `dir` is (a diffusers folder or a DiT folder).
fn discover(dir: &std::path::Path, size: ModelSize) -> Result<ModelFiles> {
    match ModelFiles::discover(dir, Some(size.variant())) {
        Ok(f) => Ok(f),
        Err(e) if size == ModelSize::XlTurbo => Err(e),
        Err(_) => ModelFiles::discover(dir, None),
    }
}

/// Run the benchmark. `log` receives one line per step of progress.
pub fn model_bench(cfg: &ModelBenchConfig, log: &mut dyn FnMut(&str)) -> Result<ModelBenchReport> {
    let dev = &cfg.device;
    let mut report = ModelBenchReport {
        device: format!("{dev:?}"),
        threads: crate::cpu::threads(),
        weights: cfg
            .weights
            .as_ref()
            .map_or("random".to_string(), |p| p.display().to_string()),
        repeats: cfg.repeats.max(1),
        enc_len: cfg.enc_len,
        matmul_dtype: format!("{:?}", cfg.matmul_dtype.unwrap_or(DType::F32)),
        cpu_precision: if dev.is_cpu() {
            cfg.cpu_precision.name().to_string()
        } else {
            "f32".to_string()
        },
        cpu_isa: format!("{:?}", crate::gemm::isa()),
        cpu_bf16_native: crate::gemm::native_bf16(),
        vae_decode_seconds: cfg.vae_seconds,
        ..Default::default()
    };
    report.matmul_gflops = machine_matmul_gflops(dev, 3)?;
    log(&format!(
        "f32 matmul: {:.1} GFLOP/s ({} threads)",
        report.matmul_gflops, report.threads
    ));

    let mut sizes: Vec<ModelSize> = cfg.dit_cases.iter().map(|c| c.size).collect();
    sizes.sort();
    sizes.dedup();
    let mut row_check = RowCheck::default();
    let mut measured: Vec<(DitCase, f64, f64)> = Vec::new();
    let mut per_phase = true;
    for size in sizes {
        per_phase &= reset_peak_rss();
        let t = Instant::now();
        let mut den = match &cfg.weights {
            None => AceStepDenoiser::random(&size.dit_config(), cfg.seed, dev)?,
            Some(dir) => {
                let files = discover(dir, size)?;
                AceStepDenoiser::from_source(&files.open_dit(dev)?, &files.read_dit_config()?)?
            }
        };
        den.set_matmul_dtype(cfg.matmul_dtype)?;
        if dev.is_cpu() && cfg.cpu_precision != Precision::F32 {
            den.set_cpu_precision(cfg.cpu_precision)?;
        }
        report
            .weight_bytes
            .insert(size.key().into(), den.linear_weight_bytes());
        let load = t.elapsed().as_secs_f64();
        report.load_seconds.insert(size.key().into(), load);
        log(&format!("{}: model ready in {load:.1} s", size.key()));
        let dcfg = den.config().clone();
        let mut cases: Vec<&DitCase> = cfg.dit_cases.iter().filter(|c| c.size == size).collect();
        cases.sort_by_key(|c| (c.seconds, c.batch));
        let max_batch = cases.iter().map(|c| c.batch).max().unwrap_or(1);
        let conds: Vec<Conditioning> = (0..max_batch)
            .map(|i| {
                let states = Tensor::randn(
                    0f32,
                    1.0,
                    (1, cfg.enc_len + i, dcfg.encoder.hidden_size),
                    dev,
                )?;
                Ok(Conditioning::new(states)?)
            })
            .collect::<Result<_>>()?;
        let mut seconds_done: Option<u32> = None;
        let mut rows: Vec<(Tensor, Tensor)> = Vec::new();
        // Row i's first output bytes, per song length.
        let mut first_out: Vec<Option<Vec<u32>>> = Vec::new();
        for case in cases {
            let frames = case.seconds as usize * 25;
            if seconds_done != Some(case.seconds) {
                seconds_done = Some(case.seconds);
                rows = (0..max_batch)
                    .map(|_| {
                        Ok((
                            Tensor::randn(
                                0f32,
                                1.0,
                                (1, frames, dcfg.audio_acoustic_hidden_dim),
                                dev,
                            )?,
                            Tensor::randn(0f32, 1.0, (1, frames, den.context_channels()), dev)?,
                        ))
                    })
                    .collect::<Result<_>>()?;
                first_out = vec![None; max_batch];
            }
            let b = case.batch;
            let x = Tensor::cat(&rows[..b].iter().map(|r| &r.0).collect::<Vec<_>>(), 0)?;
            let batch = DenoiseBatch {
                x,
                t: (0..b).map(|i| 1.0 - 0.1 * i as f32).collect(),
                conditions: conds[..b].iter().collect(),
                contexts: rows[..b].iter().map(|r| &r.1).collect(),
                sources: Vec::new(),
            };
            // Warm-up: fills the cross K/V cache and the workspace, as in steady state.
            let out = den.velocity(&batch)?;
            sync(&out)?;
            let (mut best, mut best_cpu) = (f64::MAX, f64::NAN);
            for rep in 0..cfg.repeats.max(1) {
                let c0 = process_cpu_seconds();
                let ops0 = crate::dit::composed::profile::tensor_serial();
                let t = Instant::now();
                let v = den.velocity(&batch)?;
                sync(&v)?;
                let e = t.elapsed().as_secs_f64();
                if rep == 0 {
                    let ops = crate::dit::composed::profile::tensor_serial() - ops0;
                    insert(&mut report.dit_step_tensor_ops, case, ops);
                }
                if e < best {
                    best = e;
                    best_cpu = process_cpu_seconds()
                        .zip(c0)
                        .map_or(f64::NAN, |(a, b)| a - b);
                }
            }
            if cfg.check_rows {
                // A batch whose last row no smaller batch ran: run that row alone once, so every
                // batch size measured compares at least one row (also when it is the only one).
                if b > 1 && first_out[b - 1].is_none() {
                    let alone = den.velocity(&DenoiseBatch {
                        x: rows[b - 1].0.clone(),
                        t: vec![batch.t[b - 1]],
                        conditions: vec![&conds[b - 1]],
                        contexts: vec![&rows[b - 1].1],
                        sources: Vec::new(),
                    })?;
                    first_out[b - 1] = Some(bits(&alone)?);
                }
                for (i, slot) in first_out.iter_mut().enumerate().take(b) {
                    let got = bits(&out.narrow(0, i, 1)?)?;
                    match slot {
                        None => *slot = Some(got),
                        Some(want) => row_check.compare(want, &got),
                    }
                }
            }
            let flops = b as f64 * dit_step_flops(&dcfg, frames, cfg.enc_len);
            let share = flops / best / 1e9 / report.matmul_gflops;
            insert(&mut report.dit_step_ms, case, best * 1e3);
            insert(&mut report.dit_step_cpu_ms, case, best_cpu * 1e3);
            insert(&mut report.dit_step_gflop, case, flops / 1e9);
            insert(&mut report.dit_roofline_share_by_case, case, share);
            log(&format!(
                "{} {} s batch {b}: {:.0} ms per step ({:.1} GFLOP/s, {:.0}% of matmul; process CPU {:.0} ms)",
                size.key(),
                case.seconds,
                best * 1e3,
                flops / best / 1e9,
                100.0 * share,
                best_cpu * 1e3
            ));
            measured.push((case.clone(), flops, share));
        }
        if cfg.lora_rank > 0 && size == ModelSize::Turbo2b {
            let r = lora_change(&mut den, cfg.lora_rank, cfg.repeats.max(1), dev)?;
            log(&format!(
                "{}: LoRA strength change (rank {}, {} modules): {:.0} ms, {:.0} ms by the three-merge path it replaced",
                size.key(),
                r.rank,
                r.modules,
                r.change_ms,
                r.three_merge_ms
            ));
            report.lora_change = Some(r);
        }
        drop(den);
        if let Some(mib) = peak_rss_mib() {
            report.peak_rss_mib.insert(size.key().into(), mib);
            log(&format!("{}: peak RSS {mib:.0} MiB", size.key()));
        }
    }
    let headline = DitCase {
        size: ModelSize::Turbo2b,
        seconds: 60,
        batch: 1,
    };
    let pick = measured.iter().find(|m| m.0 == headline).or_else(|| {
        measured
            .iter()
            .max_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal))
    });
    if let Some((case, _, share)) = pick {
        report.dit_roofline_case = Some(case.clone());
        report.dit_roofline_share = *share;
    }
    report.rows_identical_across_batches = row_check.identical;
    report.row_check = row_check;

    if cfg.vae_seconds > 0.0 {
        per_phase &= reset_peak_rss();
        let t = Instant::now();
        let codec = match &cfg.weights {
            None => AceStepCodec::random(&VaeConfig::acestep(), cfg.seed + 1, dev, false)?,
            Some(dir) => {
                let files = discover(dir, ModelSize::Turbo2b)?;
                AceStepCodec::from_source(&files.open_vae(dev)?, &files.read_vae_config()?, false)?
            }
        };
        report
            .load_seconds
            .insert("vae".into(), t.elapsed().as_secs_f64());
        report
            .weight_bytes
            .insert("vae".into(), codec.decoder_weight_bytes());
        let vcfg = codec.config().clone();
        let frames =
            (cfg.vae_seconds * vcfg.sampling_rate as f32 / vcfg.hop() as f32).round() as usize;
        let lat = Tensor::randn(
            0f32,
            1.0,
            (1, vcfg.decoder_input_channels, frames.max(1)),
            dev,
        )?;
        let mut best = f64::MAX;
        for r in 0..cfg.repeats.max(1) {
            let t = Instant::now();
            let audio = codec.decode_raw(&lat)?;
            sync(&audio)?;
            let e = t.elapsed().as_secs_f64();
            // On a GPU the first call also compiles kernels: keep it out when there are repeats.
            if r > 0 || cfg.repeats <= 1 || dev.is_cpu() {
                best = best.min(e);
            }
        }
        let flops = vae_decode_flops(&vcfg, frames);
        let audio_s = frames as f64 * vcfg.hop() as f64 / vcfg.sampling_rate as f64;
        report.vae_decode_gflop = flops / 1e9;
        report.vae_decode_ms_per_audio_second = Some(best * 1e3 / audio_s);
        let share = flops / best / 1e9 / report.matmul_gflops;
        report.vae_roofline_share = Some(share);
        log(&format!(
            "VAE decode {audio_s:.1} s: {:.2} s ({:.1} GFLOP/s, {:.0}% of matmul)",
            best,
            flops / best / 1e9,
            100.0 * share
        ));
        drop(codec);
        if let Some(mib) = peak_rss_mib() {
            report.peak_rss_mib.insert("vae".into(), mib);
            log(&format!("vae: peak RSS {mib:.0} MiB"));
        }
    }
    report.peak_rss_per_phase = per_phase;
    Ok(report)
}

/// A matmul dtype from a command-line spelling: `f32`, `bf16` or `f16`.
pub fn parse_matmul_dtype(spec: &str) -> Result<Option<DType>> {
    match spec {
        "f32" => Ok(None),
        "bf16" => Ok(Some(DType::BF16)),
        "f16" => Ok(Some(DType::F16)),
        other => Err(AceStepError::input(format!(
            "matmul dtype `{other}`: use f32, bf16 or f16"
        ))),
    }
}

/// A device from a command-line spelling: `cpu`, `cuda` or `cuda:N`. Without the `cuda` feature
/// the error says how to get a CUDA build; with it, a device that cannot be opened (no driver, no
/// GPU) is [`AceStepError::NoCudaDevice`], one line without a backtrace.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| AceStepError::input(format!("device `{s}`: bad ordinal")))?,
                None => 0,
            };
            if !cfg!(feature = "cuda") {
                return Err(AceStepError::input(format!(
                    "device `{s}`: this binary was built without CUDA. Build one with `cargo build --release -p demon-cli --features cuda` (needs nvcc and cuBLAS), or without a CUDA toolkit with `scripts/gpu-bundle.sh` (docs/performance.md, \"GPU\")"
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| AceStepError::NoCudaDevice {
                ordinal,
                detail: without_backtrace(&e),
            })
        }
        other => Err(AceStepError::input(format!(
            "device `{other}`: use cpu, cuda or cuda:N"
        ))),
    }
}

/// The message of a candle error without the backtrace candle attaches when `RUST_BACKTRACE` is
/// set.
fn without_backtrace(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(inner),
        other => other.to_string(),
    }
}
