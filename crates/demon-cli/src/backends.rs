//! Choosing and building a backend: the built-in sketch, or ACE-Step from a weights folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Device;
use demon_engine::BackendSet;
use demon_sketch::{SketchCodec, SketchConditioner, SketchDenoiser};

/// Backend names accepted by `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// The weights-free built-in backend (real time on 2 CPU cores).
    Sketch,
    /// ACE-Step 1.5 (needs `--weights DIR`).
    Acestep,
}

/// Backend options shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    #[arg(long, value_enum, default_value = "sketch")]
    pub backend: BackendKind,
    /// ACE-Step weights folder: the published `Ace-Step1.5` folder (with `acestep-v15-turbo/`,
    /// `vae/`, `Qwen3-Embedding-0.6B/`) or a diffusers-layout folder.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Which DiT of the weights folder to use (e.g. `acestep-v15-xl-turbo`).
    #[arg(long)]
    pub variant: Option<String>,
    /// LoRA adapter to load, repeatable: `PATH` or `PATH=STRENGTH` (PEFT folder or file).
    #[arg(long = "lora", value_name = "PATH[=STRENGTH]")]
    pub loras: Vec<String>,
    /// ACE-Step at full size with random weights instead of files (for benchmarks):
    /// `turbo-2b` or `xl-turbo`. It makes noise, not music.
    #[arg(long = "random-model", value_name = "SIZE")]
    pub random_model: Option<String>,
    /// Where ACE-Step computes: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features
    /// cuda`, see docs/performance.md). Not the audio device (`--device` on serve/perform).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub compute: String,
    /// Precision of the DiT's matrix products on a GPU: `f32`, `bf16` or `f16` (f32
    /// accumulation; the CPU kernels always multiply in f32).
    #[arg(long, default_value = "f32")]
    pub matmul: String,
    /// Weight precision of ACE-Step's CPU kernels: `f32`, or `bf16` (the DiT's weights kept in
    /// bf16, products summed in f32: half the memory; fast on CPUs with avx512_bf16).
    #[arg(long = "cpu-precision", default_value = "f32", value_name = "f32|bf16")]
    pub cpu_precision: String,
}

impl BackendArgs {
    /// `sketch` or `acestep`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            BackendKind::Sketch => "sketch",
            BackendKind::Acestep => "acestep",
        }
    }

    /// The device named by `--compute`.
    pub fn device(&self) -> Result<Device> {
        Ok(demon_acestep::bench::parse_device(&self.compute)?)
    }

    /// The CPU kernels' precision named by `--cpu-precision` (a CPU option: an error with
    /// `--compute cuda`, where `--matmul` sets the precision).
    pub fn cpu_precision(&self) -> Result<demon_acestep::gemm::Precision> {
        let p: demon_acestep::gemm::Precision =
            self.cpu_precision.parse().map_err(|e: String| anyhow!(e))?;
        if p != demon_acestep::gemm::Precision::F32 && !self.device()?.is_cpu() {
            bail!(
                "--cpu-precision {} is for --compute cpu; on a GPU use --matmul",
                self.cpu_precision
            );
        }
        Ok(p)
    }

    /// Apply `--matmul` and `--cpu-precision` to a denoiser.
    fn set_precision(&self, denoiser: &mut demon_acestep::AceStepDenoiser) -> Result<()> {
        denoiser.set_matmul_dtype(self.matmul_dtype()?)?;
        let p = self.cpu_precision()?;
        if p != demon_acestep::gemm::Precision::F32 {
            denoiser.set_cpu_precision(p)?;
        }
        Ok(())
    }

    /// The matmul dtype named by `--matmul` (`None`: f32). Low precision is a GPU option: the
    /// CPU kernels multiply in f32, so asking for it on the CPU is an error rather than a
    /// silent no-op (and a wasted copy of the weights).
    pub fn matmul_dtype(&self) -> Result<Option<candle_core::DType>> {
        let dtype = demon_acestep::bench::parse_matmul_dtype(&self.matmul)?;
        // From the spelling, not `device()`: opening a CUDA device twice makes two devices whose
        // tensors cannot meet.
        if dtype.is_some() && self.compute == "cpu" {
            bail!(
                "--matmul {} needs --compute cuda: the CPU kernels multiply in f32",
                self.matmul
            );
        }
        Ok(dtype)
    }
}

/// The sketch backend on the CPU.
pub fn sketch() -> BackendSet {
    let device = Device::Cpu;
    BackendSet {
        name: "sketch".into(),
        denoiser: Box::new(SketchDenoiser::new(device.clone())),
        codec: Box::new(SketchCodec::new(device.clone())),
        conditioner: Box::new(SketchConditioner::new(device)),
    }
}

/// Build the requested backend.
pub fn build(args: &BackendArgs) -> Result<BackendSet> {
    match args.backend {
        BackendKind::Sketch => {
            if args.weights.is_some() || args.variant.is_some() || args.random_model.is_some() {
                bail!(
                    "--weights, --variant and --random-model are for --backend acestep; the sketch backend needs no weights"
                );
            }
            if !args.loras.is_empty() {
                bail!("the sketch backend has no LoRA adapters; use --backend acestep");
            }
            if args.compute != "cpu" || args.matmul != "f32" {
                bail!(
                    "--compute and --matmul are for --backend acestep; the sketch backend runs on the CPU"
                );
            }
            if args.cpu_precision != "f32" {
                bail!(
                    "--cpu-precision is for --backend acestep; the sketch backend has no weights"
                );
            }
            Ok(sketch())
        }
        BackendKind::Acestep if args.random_model.is_some() => {
            let size = args.random_model.as_deref().unwrap_or_default();
            let config = match size {
                "turbo-2b" | "2b" => demon_acestep::AceStepConfig::turbo_2b(),
                "xl-turbo" | "xl" => demon_acestep::AceStepConfig::xl_turbo(),
                other => bail!("--random-model `{other}`: use turbo-2b or xl-turbo"),
            };
            if args.weights.is_some() {
                bail!("--random-model and --weights exclude each other");
            }
            let model = demon_acestep::AceStep::random(&config, 0, &args.device()?)?;
            let (mut denoiser, codec, conditioner) = model.into_parts();
            args.set_precision(&mut denoiser)?;
            Ok(BackendSet {
                name: "acestep".into(),
                denoiser: Box::new(denoiser),
                codec: Box::new(codec),
                conditioner: Box::new(conditioner),
            })
        }
        BackendKind::Acestep => {
            let dir = args.weights.as_deref().ok_or_else(|| {
                anyhow!("--backend acestep needs --weights DIR (see README: ACE-Step 1.5)")
            })?;
            acestep(dir, args)
        }
    }
}

fn acestep(dir: &Path, args: &BackendArgs) -> Result<BackendSet> {
    let device = args.device()?;
    let model = demon_acestep::AceStep::load_variant(dir, args.variant.as_deref(), &device)
        .with_context(|| format!("loading ACE-Step weights from `{}`", dir.display()))?;
    let (mut denoiser, codec, conditioner) = model.into_parts();
    args.set_precision(&mut denoiser)?;
    for spec in &args.loras {
        let (path, strength) = match spec.rsplit_once('=') {
            Some((p, s)) => (
                p,
                s.parse::<f32>()
                    .map_err(|_| anyhow!("--lora `{spec}`: `{s}` is not a strength"))?,
            ),
            None => (spec.as_str(), 1.0),
        };
        denoiser
            .add_lora(Path::new(path), strength)
            .with_context(|| format!("loading LoRA `{path}`"))?;
    }
    Ok(BackendSet {
        name: "acestep".into(),
        denoiser: Box::new(denoiser),
        codec: Box::new(codec),
        conditioner: Box::new(conditioner),
    })
}
