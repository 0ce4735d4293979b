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
//!   and the degrade policy that keeps a session in real time; [`lead`]: the adaptive decode
//!   lead; [`latency`]: knob-to-ear accounting (which slice first carries a control, and the
//!   per-class figures from what clients report).
//! - [`decode`], [`loopbuf`], [`sink`], [`rt`]: windowed decode, the loop the listener hears,
//!   where played audio goes, and the real-time sections' no-allocation check.
//! - [`preset`]: the whole performer-set state as a versioned JSON preset; [`restore`]: a
//!   preset taken from and applied to the controls (through the control path), found at the end
//!   of a recording, read from a file.
//! - [`record`], [`perform`]: session files, scripted performances and exact replay;
//!   [`resolve`]: files and library songs turned into sources; [`bench`]: measured figures.
//! - [`analysis`]: tempo, key, duration and loudness measured on each loaded source;
//!   [`loudness`]: the meter of what plays and the matcher that keeps it at the source's.
//! - [`automation`]: knob automation lanes over the song timeline, followed by the playhead.
//! - [`lora_library`]: LoRA folders scanned into adapters registered without loading.
//! - [`error`]: `SessionError`, every refusal and failure with a stable wire code.

pub mod analysis;
pub mod automation;
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
pub mod latency;
pub mod lead;
pub mod loopbuf;
pub mod lora_library;
pub mod loudness;
pub mod media;
pub mod perform;
pub mod preset;
pub mod record;
pub mod render;
pub mod requests;
pub mod resolve;
pub mod restore;
pub mod rt;
pub mod session;
pub mod sink;

pub use controls::Controls;
pub use error::{SessionError, SessionResult};
pub use facts::BackendFacts;
pub use render::{RenderSpec, RenderedTake, render};
