//! # demon-acestep
//!
//! ACE-Step 1.5 (2B turbo and 5B XL turbo) as a DEMON backend on candle, f32 on CPU, re-implemented
//! from the notes in `shared/reference/acestep.md` and checked for parity against the reference
//! classes of the PyPI packages (diffusers, transformers) on tiny random models.
//!
//! - [`model`]: [`AceStep`] (load either checkpoint layout, or random weights) and
//!   [`AceStepConfig`]; the three backend objects implementing demon-engine's traits:
//!   [`denoiser`] ([`AceStepDenoiser`], DiT + LoRA), [`codec`] ([`AceStepCodec`], Oobleck VAE),
//!   [`conditioner`] ([`AceStepConditioner`]: Qwen3 tokenizer and text encoder, condition
//!   encoder, FSQ hints, silence latent).
//! - [`tasks`]: text-to-music, cover and repaint requests; the turbo timestep tables.
//! - [`weights`]: layouts, memory-mapped safetensors, [`inspect_weights`].
//! - [`debug`]: [`debug_forward`], the per-component parity harness.
//! - [`lora`]: PEFT and single-file LoRA adapters.
//! - [`threads`]: candle's element-wise pool on one thread, applied by every backend constructor.
//! - Model parts: [`text`], [`condition`], [`fsq`], [`dit`] (parameters, composed forward, fused
//!   CPU forward), [`vae`] (with [`conv`], the time-major CPU convolutions), [`nn`], [`params`]
//!   (parameter sources and the name-prefix helper), [`silence`], [`config`].
//!
//! ```no_run
//! use demon_acestep::{AceStep, inspect_weights};
//! let dir = std::path::Path::new("/models/Ace-Step1.5");
//! println!("{}", inspect_weights(dir)?);
//! let model = AceStep::load(dir, &candle_core::Device::Cpu)?;
//! let (mut denoiser, codec, conditioner) = model.into_parts();
//! denoiser.add_lora(std::path::Path::new("my-style-lora"), 0.8)?;
//! # Ok::<(), demon_acestep::AceStepError>(())
//! ```

pub mod bench;
pub mod codec;
pub mod condition;
pub mod conditioner;
pub mod config;
pub mod conv;
pub mod cpu;
pub mod debug;
pub mod denoiser;
pub mod dit;
pub mod error;
pub mod fsq;
pub mod gemm;
pub mod lora;
pub mod model;
pub mod nn;
pub mod params;
pub mod silence;
pub mod tasks;
pub mod text;
pub mod threads;
pub mod vae;
pub mod weights;

pub use codec::AceStepCodec;
pub use conditioner::AceStepConditioner;
pub use config::{DitConfig, TextEncoderConfig, VaeConfig};
pub use debug::{Component, debug_forward};
pub use denoiser::AceStepDenoiser;
pub use error::{AceStepError, Result};
pub use lora::LoraInfo;
pub use model::{AceStep, AceStepConfig};
pub use text::Task;
pub use weights::{Layout, WeightsReport, inspect_weights};

/// Helpers shared by the unit tests of this crate's kernels.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// The largest absolute value of `t`.
    pub fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .and_then(|a| a.max_all())
            .and_then(|m| m.to_scalar::<f32>())
            .expect("max abs of a tensor")
    }

    /// The largest absolute difference between `a` and `b`.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).expect("same shapes"))
    }
}
