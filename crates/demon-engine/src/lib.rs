//! # demon-engine
//!
//! The core of DEMON in Rust: a real-time streaming diffusion engine for music. It holds no I/O
//! and no threads; tensors live on candle so the same code runs on CPU and CUDA.
//!
//! - [`curve`]: scalar-or-per-frame controls and their wire specs.
//! - [`schedule`]: per-slot timestep schedules from denoise strength (demon.md §3).
//! - [`rng`]: portable counter-based Gaussian noise.
//! - [`solver`]: the step kernels (Euler, SDE re-noise, source blending, APG, CFG rescale, DCW).
//! - [`pipeline`]: `StreamPipeline`, the ring of in-flight generations (mechanism 1).
//! - [`lane`]: `SharedLane`, per-step state read by every slot on the next tick (mechanism 2).
//! - [`adapter`]: weight adapters (LoRA): the `Adapters` trait a model switches them through, their
//!   files' metadata convention and the loader a library uses.
//! - [`backend`]: the `Denoiser`, `Codec` and `Conditioner` traits every backend implements.
//! - [`host`]: counted reads of tensor values back to the host (none may happen in a tick).

pub mod adapter;
pub mod backend;
pub mod curve;
pub mod error;
pub mod host;
pub mod lane;
pub mod pipeline;
pub mod receptive;
pub mod request;
pub mod rng;
pub mod schedule;
pub mod solver;
pub mod testing;
pub mod wavelet;

pub use adapter::{
    AdapterFiles, AdapterInfo, AdapterMetadata, Adapters, LoadedAdapter, describe_file,
    header_metadata,
};
pub use backend::{
    Audio, BackendSet, Codec, Conditioner, Conditioning, DenoiseBatch, Denoiser, GenerationTask,
    Prompt, PromptUse, SourceHints, check_kept,
};
pub use curve::{Curve, CurveOp, CurveSpec};
pub use error::{EngineError, Result};
pub use lane::{ChannelGain, DcwMode, DcwSettings, KEYSTONE_CHANNELS, SharedLane};
pub use pipeline::{
    Finished, MAX_DEPTH, PipelineStats, ScheduleMode, SlotView, StreamPipeline, TickReport,
};
pub use receptive::{
    ReceptiveField, decode_window, measure_receptive_field, probe_latent, probe_latents,
};
pub use request::{
    CfgMode, LatentMask, STEP_CURVE_NAMES, SlotCondition, SlotRequest, SolverKind, StepCurves,
    StepRange,
};
pub use schedule::{Schedule, ScheduleCache, ScheduleParams};
pub use wavelet::Wavelet;

/// Latent frames per second of every backend DEMON targets (ACE-Step 1.5 and the sketch).
pub const FRAMES_PER_SECOND: f64 = 25.0;
