//! # demon-live: the runtime around the engine
//!
//! - [`render`]: offline rendering of one or many takes through the `StreamPipeline`, and the
//!   mapping from named controls (curves, prompts, guidance) to slot requests that every front
//!   end shares.

pub mod bench;
pub mod bus;
pub mod control;
pub mod core;
pub mod decode;
pub mod denoise_curve;
pub mod error;
pub mod loopbuf;
pub mod perform;
pub mod record;
pub mod render;
pub mod session;
pub mod sink;

pub use error::{SessionError, SessionResult};
pub use render::{NamedCurve, RenderError, RenderSpec, RenderedTake, render};
