//! # demon-live: the runtime around the engine
//!
//! - [`controls`]: the knob catalog and `Controls`, the one typed value for everything a
//!   performer sets; [`control`]: the wire format (`ControlMessage`, `SourceSpec`).
//! - [`requests`]: the one builder from `Controls` to slot requests and the shared lane, used
//!   by offline renders, the live core and the benchmarks alike; [`facts`]: what it needs to
//!   know about the backend (latent geometry, hop, sample rate → frame rate).
//! - [`render`]: offline rendering of one or many takes through the `StreamPipeline`.
//! - [`core`]: `LiveCore`, a live session's state and deterministic tick (controls, sources,
//!   the tick, decode scheduling); [`session`]: the runner thread and the handle front ends
//!   drive it with; [`bus`]: events to subscribers; [`budget`]: the real-time budget of a tick
//!   and the degrade policy that keeps a session in real time.
//! - [`decode`], [`loopbuf`], [`sink`], [`rt`]: windowed decode, the loop the listener hears,
//!   where played audio goes, and the real-time sections' no-allocation check.
//! - [`record`], [`perform`]: session files, scripted performances and exact replay;
//!   [`resolve`]: files and library songs turned into sources; [`bench`]: measured figures.
//! - [`error`]: `SessionError`, every refusal and failure with a stable wire code.

pub mod bench;
pub mod budget;
pub mod bus;
pub mod control;
pub mod controls;
pub mod core;
pub mod decode;
pub mod denoise_curve;
pub mod error;
pub mod facts;
pub mod loopbuf;
pub mod media;
pub mod perform;
pub mod record;
pub mod render;
pub mod requests;
pub mod resolve;
pub mod rt;
pub mod session;
pub mod sink;

pub use controls::Controls;
pub use error::{SessionError, SessionResult};
pub use facts::BackendFacts;
pub use render::{RenderSpec, RenderedTake, render};
