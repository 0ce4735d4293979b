//! Session files: a performance as JSON lines — the initial configuration, then every control
//! event stamped with the tick it was applied at, and the clock (playhead and decode lead) of
//! every tick. Together with the seeds in the configuration these determine the output, so
//! `demon replay` re-renders a performance bit for bit. See `docs/session-format.md`.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::control::ControlMessage;
use crate::core::SessionConfig;
use crate::error::{SessionError, SessionResult};

/// Version of the session-file format.
pub const FORMAT_VERSION: u32 = 1;

/// One line of a session file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionLine {
    Header {
        version: u32,
        config: SessionConfig,
    },
    /// A control message applied before tick `tick` ran.
    Event {
        tick: u64,
        message: ControlMessage,
    },
    /// The clock the runner used at `tick`: where the playhead was and how far ahead it decoded.
    Clock {
        tick: u64,
        playhead: u64,
        lead_frames: u32,
    },
    End {
        ticks: u64,
    },
}

/// Writes a session file line by line as the performance happens.
pub struct SessionWriter {
    out: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
}

impl SessionWriter {
    pub fn create(path: &Path, config: &SessionConfig) -> SessionResult<Self> {
        let file = std::fs::File::create(path).map_err(|e| SessionError::io(path, e))?;
        let mut w = Self {
            out: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
        };
        w.line(&SessionLine::Header {
            version: FORMAT_VERSION,
            config: config.clone(),
        })?;
        Ok(w)
    }

    pub fn line(&mut self, line: &SessionLine) -> SessionResult<()> {
        let s = serde_json::to_string(line).map_err(|e| SessionError::io(&self.path, e))?;
        writeln!(self.out, "{s}").map_err(|e| SessionError::io(&self.path, e))
    }

    pub fn finish(mut self, ticks: u64) -> SessionResult<()> {
        self.line(&SessionLine::End { ticks })?;
        self.out
            .flush()
            .map_err(|e| SessionError::io(&self.path, e))
    }
}

/// A parsed session file.
#[derive(Clone, Debug)]
pub struct SessionFile {
    pub config: SessionConfig,
    /// Events in the order they were applied.
    pub events: Vec<(u64, ControlMessage)>,
    /// Playhead and lead per tick.
    pub clock: Vec<(u64, u64, u32)>,
    pub ticks: u64,
}

/// Read and check a session file; errors name the line.
pub fn read_session(path: &Path) -> SessionResult<SessionFile> {
    let file = std::fs::File::open(path).map_err(|e| SessionError::io(path, e))?;
    let at = |i: usize| format!("`{}` line {}", path.display(), i + 1);
    let mut config = None;
    let mut events = Vec::new();
    let mut clock = Vec::new();
    let mut ticks = None;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| SessionError::io(path, format!("line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: SessionLine = serde_json::from_str(&line)
            .map_err(|e| SessionError::bad_value(at(i), e.to_string()))?;
        match parsed {
            SessionLine::Header { version, config: c } => {
                if version != FORMAT_VERSION {
                    return Err(SessionError::bad_value(
                        format!("`{}`", path.display()),
                        format!(
                            "session format version {version} is not supported (expected {FORMAT_VERSION})"
                        ),
                    ));
                }
                if config.is_some() {
                    return Err(SessionError::bad_value(at(i), "a second header"));
                }
                config = Some(c);
            }
            _ if config.is_none() => {
                return Err(SessionError::bad_value(at(i), "the header must come first"));
            }
            SessionLine::Event { tick, message } => {
                if events.last().is_some_and(|(t, _)| *t > tick) {
                    return Err(SessionError::bad_value(at(i), "events out of tick order"));
                }
                events.push((tick, message));
            }
            SessionLine::Clock {
                tick,
                playhead,
                lead_frames,
            } => clock.push((tick, playhead, lead_frames)),
            SessionLine::End { ticks: t } => ticks = Some(t),
        }
    }
    let whole = || format!("`{}`", path.display());
    let config = config.ok_or_else(|| SessionError::bad_value(whole(), "no header line"))?;
    let ticks = ticks.ok_or_else(|| {
        SessionError::bad_value(whole(), "no end line (the performance was cut short)")
    })?;
    Ok(SessionFile {
        config,
        events,
        clock,
        ticks,
    })
}

/// A performance script: control events at times in seconds (JSON lines
/// `{"at": 1.5, "message": {...}}`). Comments start with `#` or `//`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScriptEvent {
    pub at: f64,
    pub message: ControlMessage,
}

pub fn read_script(path: &Path) -> SessionResult<Vec<ScriptEvent>> {
    let text = std::fs::read_to_string(path).map_err(|e| SessionError::io(path, e))?;
    let at = |i: usize| format!("`{}` line {}", path.display(), i + 1);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("//") {
            continue;
        }
        let ev: ScriptEvent =
            serde_json::from_str(t).map_err(|e| SessionError::bad_value(at(i), e.to_string()))?;
        if !(ev.at.is_finite() && ev.at >= 0.0) {
            return Err(SessionError::bad_value(
                at(i),
                format!("time {} is not a time in seconds", ev.at),
            ));
        }
        out.push(ev);
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(out)
}
