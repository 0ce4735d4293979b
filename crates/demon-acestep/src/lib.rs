//! # demon-acestep
//!
//! ACE-Step 1.5 (arXiv 2602.xxxx model family, re-implemented from acestep.md) as a DEMON backend
//! on candle, f32 on CPU: Qwen3 text encoder and tokenizer, condition encoder (lyric and timbre
//! encoders, packing, null condition), FSQ audio tokenizer and detokenizer, the DiT, the Oobleck
//! VAE, LoRA merging, and weight loading for both checkpoint layouts.

pub mod config;
pub mod error;
pub mod nn;
pub mod silence;
pub mod weights;

pub use error::{AceStepError, Result};
pub mod condition;
pub mod dit;
pub mod fsq;
pub mod text;
pub mod vae;
