//! Closed sets of command-line values as clap `ValueEnum`s, and their mapping to the library
//! types. A wrong value is refused by clap, before anything runs, with the message the library
//! gives (`unknown solver `rk4` (ode, sde)`), and `--help` lists the possible values.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::path::Path;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::{Arg, Command, ValueEnum};

/// A value parser for a `ValueEnum` whose error names `what` and the accepted values.
#[derive(Clone)]
pub struct Closed<E> {
    what: &'static str,
    _kind: PhantomData<E>,
}

/// `value_parser = closed::<E>("solver")`.
pub fn closed<E>(what: &'static str) -> Closed<E> {
    Closed {
        what,
        _kind: PhantomData,
    }
}

impl<E: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for Closed<E> {
    type Value = E;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<E, clap::Error> {
        let text = value.to_string_lossy();
        E::from_str(&text, true).map_err(|_| {
            let names: Vec<String> = E::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|p| p.get_name().to_string())
                .collect();
            let flag = arg.map(|a| a.to_string()).unwrap_or_default();
            let mut e = clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!(
                    "invalid value for {flag}: unknown {} `{text}` ({})\n",
                    self.what,
                    names.join(", ")
                ),
            );
            e = e.with_cmd(cmd);
            e
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            E::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value()),
        ))
    }
}

/// A file named on the command line, checked before any model loads: one line that names
/// the flag and the path (`--source song.wav: no such file`).
pub fn existing_file(flag: &str, path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => anyhow::bail!("{flag} {}: not a file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{flag} {}: no such file", path.display())
        }
        Err(e) => anyhow::bail!("{flag} {}: cannot be read ({e})", path.display()),
    }
}

/// `--source`: a `library:` name needs no file; anything else must be one.
pub fn source_file(source: Option<&str>) -> anyhow::Result<()> {
    match source {
        Some(s) if !s.starts_with("library:") => existing_file("--source", Path::new(s)),
        _ => Ok(()),
    }
}

/// `--solver`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Solver {
    /// Deterministic flow-matching Euler.
    Ode,
    /// Re-noise from the predicted clean latent at every step.
    Sde,
}

impl From<Solver> for demon_engine::SolverKind {
    fn from(s: Solver) -> Self {
        match s {
            Solver::Ode => Self::Ode,
            Solver::Sde => Self::Sde,
        }
    }
}

/// `--cfg-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CfgMode {
    /// A negative pass at every step.
    Full,
    /// A negative pass at each generation's first step only.
    #[value(alias = "init")]
    Initialize,
    /// No negative pass: the initial noise stands in for it.
    #[value(name = "self")]
    SelfNoise,
}

impl From<CfgMode> for demon_engine::CfgMode {
    fn from(m: CfgMode) -> Self {
        match m {
            CfgMode::Full => Self::Full,
            CfgMode::Initialize => Self::Initialize,
            CfgMode::SelfNoise => Self::SelfNoise,
        }
    }
}

/// `--matmul`: precision of the DiT's matrix products on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Matmul {
    F32,
    Bf16,
    F16,
}

impl Matmul {
    /// The low-precision dtype, `None` for f32.
    pub fn dtype(self) -> Option<candle_core::DType> {
        match self {
            Matmul::F32 => None,
            Matmul::Bf16 => Some(candle_core::DType::BF16),
            Matmul::F16 => Some(candle_core::DType::F16),
        }
    }
}

/// `--cpu-precision`: weight precision of ACE-Step's CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuPrecision {
    F32,
    Bf16,
}

impl From<CpuPrecision> for demon_acestep::gemm::Precision {
    fn from(p: CpuPrecision) -> Self {
        match p {
            CpuPrecision::F32 => Self::F32,
            CpuPrecision::Bf16 => Self::Bf16,
        }
    }
}

/// `--lora-scaling`: how an adapter's strength is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LoraScalingArg {
    /// PEFT's: strength × α/r (strength 1 is the adapter as trained).
    AlphaRank,
    /// DEMON's: strength alone, α ignored (strengths written for the reference carry over).
    None,
}

impl From<LoraScalingArg> for demon_acestep::lora::LoraScaling {
    fn from(s: LoraScalingArg) -> Self {
        match s {
            LoraScalingArg::AlphaRank => Self::AlphaOverRank,
            LoraScalingArg::None => Self::Unscaled,
        }
    }
}

/// The LoRA library's folders (`serve`, `perform`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LibraryArgs {
    /// A folder of LoRA adapters (`*.safetensors` files, PEFT folders, one level of group
    /// folders), registered at start without loading and loaded on first use (repeatable).
    /// `demon/loras` under the user's data folder is scanned too when it exists.
    #[arg(long = "lora-dir", value_name = "DIR")]
    pub lora_dirs: Vec<std::path::PathBuf>,
}

impl LibraryArgs {
    /// The default library folder: `$XDG_DATA_HOME/demon/loras`, else
    /// `~/.local/share/demon/loras`.
    pub fn default_dir() -> Option<std::path::PathBuf> {
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
            })?;
        Some(data.join("demon").join("loras"))
    }

    /// The folders to scan: each `--lora-dir` (which must be a folder), then the default one
    /// when it exists. `adapters`: whether the backend can add adapters at run time (without,
    /// a `--lora-dir` is refused and the default folder is not scanned).
    pub fn dirs(&self, adapters: bool) -> anyhow::Result<Vec<std::path::PathBuf>> {
        if !adapters {
            if let Some(d) = self.lora_dirs.first() {
                anyhow::bail!(
                    "--lora-dir `{}`: this backend cannot load LoRA adapters",
                    d.display()
                );
            }
            return Ok(Vec::new());
        }
        for d in &self.lora_dirs {
            if !d.is_dir() {
                anyhow::bail!("--lora-dir `{}` is not a folder", d.display());
            }
        }
        let mut dirs = self.lora_dirs.clone();
        if let Some(d) = Self::default_dir().filter(|d| d.is_dir())
            && !dirs.contains(&d)
        {
            dirs.push(d);
        }
        Ok(dirs)
    }
}

/// `--random-model` and `--model-sizes`: the published ACE-Step sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelSize {
    /// The 2B turbo DiT.
    #[value(name = "turbo-2b", alias = "2b")]
    Turbo2b,
    /// The 5B XL turbo DiT.
    #[value(name = "xl-turbo", alias = "xl")]
    XlTurbo,
}

impl From<ModelSize> for demon_acestep::bench::ModelSize {
    fn from(s: ModelSize) -> Self {
        match s {
            ModelSize::Turbo2b => Self::Turbo2b,
            ModelSize::XlTurbo => Self::XlTurbo,
        }
    }
}

impl ModelSize {
    pub fn config(self) -> demon_acestep::AceStepConfig {
        match self {
            ModelSize::Turbo2b => demon_acestep::AceStepConfig::turbo_2b(),
            ModelSize::XlTurbo => demon_acestep::AceStepConfig::xl_turbo(),
        }
    }
}

/// `demon bench --only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchSection {
    Render,
    Ticks,
    Propagation,
    Decode,
    /// Knob-to-ear latency per class with a simulated client.
    Latency,
    Model,
    /// Similarity to the source against denoise (runs only when asked for).
    #[value(name = "denoise_curve")]
    DenoiseCurve,
}

impl BenchSection {
    pub fn name(self) -> &'static str {
        match self {
            BenchSection::Render => "render",
            BenchSection::Ticks => "ticks",
            BenchSection::Propagation => "propagation",
            BenchSection::Decode => "decode",
            BenchSection::Latency => "latency",
            BenchSection::Model => "model",
            BenchSection::DenoiseCurve => "denoise_curve",
        }
    }
}

/// `demon debug forward COMPONENT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Component {
    TextEncoder,
    ConditionEncoder,
    Dit,
    VaeEncode,
    VaeDecode,
    FsqRoundtrip,
}

impl From<Component> for demon_acestep::Component {
    fn from(c: Component) -> Self {
        match c {
            Component::TextEncoder => Self::TextEncoder,
            Component::ConditionEncoder => Self::ConditionEncoder,
            Component::Dit => Self::Dit,
            Component::VaeEncode => Self::VaeEncode,
            Component::VaeDecode => Self::VaeDecode,
            Component::FsqRoundtrip => Self::FsqRoundtrip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_maps_and_the_names_match_the_library() {
        for c in Component::value_variants() {
            let name = c.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(demon_acestep::Component::from(*c).as_str(), name);
        }
        for s in ModelSize::value_variants() {
            let name = s.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(demon_acestep::bench::ModelSize::from(*s).key(), name);
        }
        for s in Solver::value_variants() {
            let name = s.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(
                name.parse::<demon_engine::SolverKind>().unwrap(),
                demon_engine::SolverKind::from(*s)
            );
        }
        for m in CfgMode::value_variants() {
            let name = m.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(
                name.parse::<demon_engine::CfgMode>().unwrap(),
                demon_engine::CfgMode::from(*m)
            );
        }
        for p in CpuPrecision::value_variants() {
            let name = p.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(demon_acestep::gemm::Precision::from(*p).name(), name);
        }
        assert_eq!(Matmul::Bf16.dtype(), Some(candle_core::DType::BF16));
        assert_eq!(Matmul::F32.dtype(), None);
    }
}
