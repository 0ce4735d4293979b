//! Headless performances and their exact replay.
//!
//! `perform` runs a live session from a script of timed control events (seconds), recording the
//! session file and what was played; `replay` re-renders a session file offline. Both drive the
//! same runner, with the session clock (one block of `samples_per_tick` per tick) deciding what
//! is heard, so the two WAV files are byte-identical.

use std::path::Path;

use demon_engine::BackendSet;

use crate::core::{LiveCore, SessionConfig};
use crate::error::{SessionError, SessionResult};
use crate::record::{ScriptEvent, SessionFile};
use crate::session::{RunOptions, SessionSummary, run_blocking};
use crate::sink::{AudioSink, WavRecorder};

/// Convert script times to ticks: an event at `t` seconds applies before the first tick that
/// starts at or after `t`.
pub fn script_ticks(
    events: &[ScriptEvent],
    samples_per_tick: usize,
    sample_rate: u32,
) -> Vec<(u64, crate::control::ControlMessage)> {
    let tick_s = samples_per_tick as f64 / sample_rate as f64;
    events
        .iter()
        .map(|e| {
            (
                ((e.at / tick_s) - 1e-9).ceil().max(0.0) as u64,
                e.message.clone(),
            )
        })
        .collect()
}

/// Run a scripted performance for `seconds`.
#[allow(clippy::too_many_arguments)]
pub fn perform(
    config: SessionConfig,
    backend: BackendSet,
    script: &[ScriptEvent],
    seconds: f64,
    record: Option<&Path>,
    out_wav: Option<&Path>,
    realtime: bool,
    mut sinks: Vec<Box<dyn AudioSink>>,
    lora_dirs: Vec<std::path::PathBuf>,
) -> SessionResult<SessionSummary> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= crate::render::MAX_SECONDS) {
        return Err(SessionError::bad_value(
            "performance length",
            format!("{seconds} s is outside (0, {}]", crate::render::MAX_SECONDS),
        ));
    }
    let core = LiveCore::new(config, backend)?;
    let spt = core.config().samples_per_tick;
    let sr = core.sample_rate();
    let ticks = (seconds * sr as f64 / spt as f64).ceil() as u64;
    if let Some(p) = out_wav {
        sinks.push(Box::new(WavRecorder::create(p, sr, false)?));
    }
    let opts = RunOptions {
        realtime,
        sinks,
        session_file: record.map(Path::to_path_buf),
        script: script_ticks(script, spt, sr),
        max_ticks: Some(ticks),
        lora_dirs,
        ..Default::default()
    };
    run_blocking(core, opts)
}

/// Re-render a recorded session offline to `out_wav`.
pub fn replay(
    file: &SessionFile,
    backend: BackendSet,
    out_wav: &Path,
) -> SessionResult<SessionSummary> {
    file.check_backend(&backend.name)?;
    let core = LiveCore::new(file.config.clone(), backend)?;
    let sr = core.sample_rate();
    let opts = RunOptions {
        realtime: false,
        sinks: vec![Box::new(WavRecorder::create(out_wav, sr, false)?)],
        session_file: None,
        script: file.events.clone(),
        max_ticks: Some(file.ticks),
        clock: file.clock.clone(),
        ..Default::default()
    };
    run_blocking(core, opts)
}
