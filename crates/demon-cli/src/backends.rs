//! Choosing and building a backend: the built-in sketch, or ACE-Step from a weights folder —
//! and what the backend layer offers the front ends beside the model: its source resolver (the
//! sketch has a song library) and, when a second instance is cheap, a way to make one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{Device, Tensor};
use demon_engine::{BackendSet, Prompt};
use demon_live::resolve::{SongLibrary, SourceResolver};
use demon_live::{BackendFacts, SessionError, SessionResult};
use demon_sketch::SketchConditioner;

use crate::args::{CpuPrecision, LoraScalingArg, Matmul, ModelSize, closed};

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
    /// The model: `sketch` (small, built in, no weights) or `acestep` (ACE-Step 1.5; needs
    /// --weights or --random-model).
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
    /// How LoRA strengths scale (ACE-Step): `alpha-rank` (PEFT's α/r; strength 1 is the
    /// adapter as trained) or `none` (DEMON's: no α/r, so the reference's strengths carry over).
    #[arg(long = "lora-scaling", default_value = "alpha-rank", value_parser = closed::<LoraScalingArg>("LoRA scaling"))]
    pub lora_scaling: LoraScalingArg,
    /// ACE-Step at full size with random weights instead of files (for benchmarks):
    /// `turbo-2b` or `xl-turbo`. It makes noise, not music.
    #[arg(long = "random-model", value_name = "SIZE", value_parser = closed::<ModelSize>("model size"))]
    pub random_model: Option<ModelSize>,
    /// Where ACE-Step computes: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features
    /// cuda`, see docs/performance.md). Not the audio device (`--device` on serve/perform).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]")]
    pub compute: String,
    /// Precision of the DiT's matrix products on a GPU: `f32`, `bf16` or `f16` (f32
    /// accumulation; the CPU kernels always multiply in f32).
    #[arg(long, default_value = "f32", value_parser = closed::<Matmul>("matmul dtype"))]
    pub matmul: Matmul,
    /// Weight precision of ACE-Step's CPU kernels: `f32`, or `bf16` (the DiT's weights kept in
    /// bf16, products summed in f32: half the memory; fast on CPUs with avx512_bf16).
    #[arg(long = "cpu-precision", default_value = "f32", value_parser = closed::<CpuPrecision>("CPU precision"))]
    pub cpu_precision: CpuPrecision,
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
        let p = demon_acestep::gemm::Precision::from(self.cpu_precision);
        if p != demon_acestep::gemm::Precision::F32 && !self.device()?.is_cpu() {
            bail!(
                "--cpu-precision {} is for --compute cpu; on a GPU use --matmul",
                p.name()
            );
        }
        Ok(p)
    }

    /// Apply `--matmul` and `--cpu-precision` to a denoiser.
    fn set_precision(&self, denoiser: &mut demon_acestep::AceStepDenoiser) -> Result<()> {
        denoiser.set_lora_scaling(self.lora_scaling.into());
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
        let dtype = self.matmul.dtype();
        // From the spelling, not `device()`: opening a CUDA device twice makes two devices whose
        // tensors cannot meet.
        if dtype.is_some() && self.compute == "cpu" {
            bail!(
                "--matmul {} needs --compute cuda: the CPU kernels multiply in f32",
                self.matmul_name()
            );
        }
        Ok(dtype)
    }

    fn matmul_name(&self) -> String {
        use clap::ValueEnum;
        self.matmul
            .to_possible_value()
            .map(|p| p.get_name().to_string())
            .unwrap_or_default()
    }
}

/// A built backend and what the backend layer offers beside the model.
pub struct Backend {
    pub set: BackendSet,
    /// Turns `--source` names (files, `library:` songs) into sources for this backend.
    pub sources: SourceResolver,
    /// A second, independent instance, when making one is cheap (the weights-free sketch):
    /// the server's offline renders run on it beside the live session.
    spare: Option<fn() -> BackendSet>,
    /// One line saying which backend runs.
    pub description: String,
}

impl Backend {
    fn new(
        mut set: BackendSet,
        library: Option<Arc<dyn SongLibrary>>,
        spare: Option<fn() -> BackendSet>,
        description: String,
    ) -> Self {
        let facts = BackendFacts::of(&mut set);
        let sources = SourceResolver::new(facts, set.codec.device().clone(), library);
        Self {
            set,
            sources,
            spare,
            description,
        }
    }

    /// A fresh instance of this backend when that is cheap; `None` for a loaded model.
    pub fn spare(&self) -> Option<fn() -> BackendSet> {
        self.spare
    }
}

/// The sketch's procedural composer as a song library: `library:STYLE[:N]` is song `N` of a
/// style, composed at the prompt's tempo and key.
struct SketchLibrary;

impl SongLibrary for SketchLibrary {
    fn names(&self) -> Vec<String> {
        demon_sketch::Style::ALL
            .iter()
            .flat_map(|s| {
                (0..4).map(move |i| format!("library:{}:{i}", s.name().replace(' ', "_")))
            })
            .collect()
    }

    fn song(
        &self,
        style_name: &str,
        index: u64,
        prompt: &Prompt,
        frames: usize,
        device: &Device,
    ) -> SessionResult<Tensor> {
        let reading = demon_sketch::style::read_prompt(style_name);
        if reading.unrecognised {
            return Err(SessionError::bad_source(
                format!("library:{style_name}"),
                format!(
                    "unknown library style `{style_name}` (house, techno, ambient, hip hop, funk, drum and bass)"
                ),
            ));
        }
        let style = demon_sketch::SketchCondition {
            style_weights: reading.style_weights,
            bpm: 0.0,
            tonic: 0,
            minor: false,
            brightness: 0.0,
            energy: 0.0,
            timbre: None,
        }
        .dominant_style();
        let cond = SketchConditioner::default()
            .read(prompt)
            .map_err(|e| SessionError::engine("prompt", e))?;
        let song = demon_sketch::composer::compose(demon_sketch::composer::SongSpec {
            style,
            bpm: prompt.bpm.unwrap_or(cond.bpm),
            tonic: cond.tonic,
            minor: cond.minor,
            seed: 1000 + index,
            frames,
        });
        Ok(Tensor::from_vec(
            song.latent,
            (1, frames, demon_sketch::layout::CHANNELS),
            device,
        )?)
    }

    fn tempo(&self, prompt: &Prompt) -> Option<f32> {
        SketchConditioner::default()
            .read(prompt)
            .ok()
            .map(|c| c.bpm)
    }
}

/// The sketch backend on the CPU.
pub fn sketch() -> BackendSet {
    demon_sketch::backend()
}

/// Build the requested backend.
pub fn build(args: &BackendArgs) -> Result<Backend> {
    Ok(match args.backend {
        BackendKind::Sketch => Backend::new(
            build_set(args)?,
            Some(Arc::new(SketchLibrary)),
            Some(sketch),
            "backend: the built-in sketch (no model weights configured; --backend acestep --weights DIR uses ACE-Step)".into(),
        ),
        BackendKind::Acestep => {
            let set = build_set(args)?;
            let description = format!("backend: {}", set.name);
            Backend::new(set, None, None, description)
        }
    })
}

fn build_set(args: &BackendArgs) -> Result<BackendSet> {
    match args.backend {
        BackendKind::Sketch => {
            if args.weights.is_some() || args.variant.is_some() || args.random_model.is_some() {
                bail!(
                    "--weights, --variant and --random-model are for --backend acestep; the sketch backend needs no weights"
                );
            }
            if !args.loras.is_empty() {
                bail!(
                    "--lora is for --backend acestep; sketch adapter files go in a --lora-dir (serve, perform)"
                );
            }
            if args.lora_scaling != LoraScalingArg::AlphaRank {
                bail!("--lora-scaling is for --backend acestep; sketch adapters have no α or rank");
            }
            if args.compute != "cpu" || args.matmul != Matmul::F32 {
                bail!(
                    "--compute and --matmul are for --backend acestep; the sketch backend runs on the CPU"
                );
            }
            if args.cpu_precision != CpuPrecision::F32 {
                bail!(
                    "--cpu-precision is for --backend acestep; the sketch backend has no weights"
                );
            }
            Ok(sketch())
        }
        BackendKind::Acestep => match args.random_model {
            Some(size) => {
                if args.weights.is_some() {
                    bail!("--random-model and --weights exclude each other");
                }
                let model = demon_acestep::AceStep::random(&size.config(), 0, &args.device()?)?;
                let (mut denoiser, codec, conditioner) = model.into_parts();
                args.set_precision(&mut denoiser)?;
                Ok(BackendSet {
                    name: "acestep".into(),
                    denoiser: Box::new(denoiser),
                    codec: Box::new(codec),
                    conditioner: Box::new(conditioner),
                })
            }
            None => {
                let dir = args.weights.as_deref().ok_or_else(|| {
                    anyhow!("--backend acestep needs --weights DIR (see README: ACE-Step 1.5)")
                })?;
                acestep(dir, args)
            }
        },
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
