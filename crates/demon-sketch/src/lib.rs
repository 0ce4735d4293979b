//! # demon-sketch: the weights-free built-in backend
//!
//! ACE-Step's weights (about 6 GB) cannot ship, and its 2 B DiT runs far slower than real time
//! on a 2-core CPU. The sketch backend lets a fresh machine play music in real time with no
//! download, and gives the engine a model whose cost is near zero, so engine overhead can be
//! measured on its own (architecture.md, "The built-in sketch backend").
//!
//! - [`layout`]: a 64-channel, 25 Hz latent whose channels are musical parameters.
//! - [`synth`] / [`codec`]: a synthesizer decoding it to 48 kHz stereo, with real release and
//!   reverb tails (so windowed decode applies), and an analysis encoder for any audio.
//! - [`composer`]: a procedural composer of songs in six styles.
//! - [`denoiser`]: the exact closed-form denoiser over the composer's library, per local window.
//! - [`adapters`]: adapter files (the sketch's LoRA: a prior over its styles) for a library.
//! - [`conditioner`]: prompts (styles, mood, tempo, key) → conditioning; negative prompts and
//!   guidance work because conditionings are priors over the library.
//!
//! It is a genuine diffusion model (the exact score of a mixture), honestly a demo: it can only
//! recombine what its composer writes.

pub mod adapters;
pub mod analysis;
pub mod codec;
pub mod composer;
pub mod conditioner;
pub mod denoiser;
pub mod layout;
pub mod style;
pub mod synth;

pub use codec::SketchCodec;
pub use conditioner::{SketchCondition, SketchConditioner};
pub use denoiser::SketchDenoiser;
pub use style::Style;

use demon_engine::{BackendSet, Denoiser};

/// The sketch backend on the CPU as one [`BackendSet`]: what `demon` builds for
/// `--backend sketch` and what tests run against.
pub fn backend() -> BackendSet {
    backend_with(Box::new(SketchDenoiser::default()))
}

/// [`backend`] with another denoiser (a test's wrapper that slows, counts or fails calls).
pub fn backend_with(denoiser: Box<dyn Denoiser>) -> BackendSet {
    BackendSet {
        name: "sketch".into(),
        denoiser,
        codec: Box::new(SketchCodec::default()),
        conditioner: Box::new(SketchConditioner::default()),
    }
}
