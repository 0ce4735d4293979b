//! Errors of the ACE-Step backend. Every variant that concerns a file names the file, and every
//! variant that concerns a tensor names the tensor, so a user pointing `--weights` at the wrong
//! folder sees at once what is missing or broken.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while loading or running ACE-Step 1.5.
#[derive(Debug, Error)]
pub enum AceStepError {
    /// A file the layout requires is not there.
    #[error("missing file {path}: {what}")]
    MissingFile { path: PathBuf, what: String },

    /// A file could not be read (permissions, I/O error).
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A safetensors or torch file ends before the data its header promises.
    #[error("truncated file {path}: {detail}")]
    Truncated { path: PathBuf, detail: String },

    /// A file is not in the format it should be (bad header, bad JSON, unsupported dtype).
    #[error("invalid file {path}: {detail}")]
    InvalidFile { path: PathBuf, detail: String },

    /// A tensor the model needs is not in any weight file of the component.
    #[error("missing tensor `{tensor}` in {path}")]
    MissingTensor { path: PathBuf, tensor: String },

    /// A tensor exists but its shape does not match the configuration.
    #[error("tensor `{tensor}` in {path} has shape {got:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// The folder is neither the original ACE-Step layout nor the diffusers layout.
    #[error("unknown weights layout in {path}: {detail}")]
    UnknownLayout { path: PathBuf, detail: String },

    /// A configuration value is missing or out of range.
    #[error("invalid config {path}: {detail}")]
    Config { path: PathBuf, detail: String },

    /// A LoRA adapter could not be applied.
    #[error("LoRA adapter {path}: {detail}")]
    Lora { path: PathBuf, detail: String },

    /// Tokenizer failure (bad tokenizer.json, encoding error).
    #[error("tokenizer {path}: {detail}")]
    Tokenizer { path: PathBuf, detail: String },

    /// A caller passed something the model cannot take (wrong shape, unknown component name).
    #[error("invalid input: {0}")]
    Input(String),

    /// A tensor operation failed. (Not a `#[source]`: candle's CUDA errors are transparent, so
    /// the chain would print the same message twice.)
    #[error("tensor error: {0}")]
    Candle(candle_core::Error),

    /// `cuda:N` was asked for but cannot be opened: no driver, no GPU, or a bad ordinal.
    #[error(
        "no CUDA device: cuda:{ordinal} cannot be opened ({detail}); check that the NVIDIA driver is loaded and the GPU is visible (`nvidia-smi`)"
    )]
    NoCudaDevice { ordinal: usize, detail: String },

    /// An engine-side call (`Denoiser`, `Conditioning`) failed, e.g. inside the benchmark.
    #[error("{0}")]
    Engine(#[from] demon_engine::EngineError),
}

impl From<candle_core::Error> for AceStepError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(e)
    }
}

impl AceStepError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::InvalidFile {
            path: path.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn input(detail: impl Into<String>) -> Self {
        Self::Input(detail.into())
    }
}

impl From<AceStepError> for demon_engine::EngineError {
    fn from(e: AceStepError) -> Self {
        match e {
            AceStepError::Candle(c) => demon_engine::EngineError::Tensor(c),
            AceStepError::Engine(e) => e,
            other => demon_engine::EngineError::Backend(other.to_string()),
        }
    }
}

pub type Result<T, E = AceStepError> = std::result::Result<T, E>;
