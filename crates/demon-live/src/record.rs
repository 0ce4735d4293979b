//! Session files: a performance as JSON lines — the initial configuration, then every control
//! event stamped with the tick it was applied at, and the clock (playhead and decode lead) of
//! every tick. Together with the seeds in the configuration these determine the output, so
//! `demon replay` re-renders a performance bit for bit. See `docs/session-format.md`.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::control::ControlMessage;
use crate::core::SessionConfig;

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
}

impl SessionWriter {
    pub fn create(path: &Path, config: &SessionConfig) -> Result<Self, String> {
        let file = std::fs::File::create(path)
            .map_err(|e| format!("cannot create `{}`: {e}", path.display()))?;
        let mut w = Self {
            out: std::io::BufWriter::new(file),
        };
        w.line(&SessionLine::Header {
            version: FORMAT_VERSION,
            config: config.clone(),
        })?;
        Ok(w)
    }

    pub fn line(&mut self, line: &SessionLine) -> Result<(), String> {
        let s = serde_json::to_string(line).map_err(|e| e.to_string())?;
        writeln!(self.out, "{s}").map_err(|e| format!("writing the session file: {e}"))
    }

    pub fn finish(mut self, ticks: u64) -> Result<(), String> {
        self.line(&SessionLine::End { ticks })?;
        self.out
            .flush()
            .map_err(|e| format!("writing the session file: {e}"))
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
pub fn read_session(path: &Path) -> Result<SessionFile, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut config = None;
    let mut events = Vec::new();
    let mut clock = Vec::new();
    let mut ticks = None;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("`{}` line {}: {e}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: SessionLine = serde_json::from_str(&line)
            .map_err(|e| format!("`{}` line {}: {e}", path.display(), i + 1))?;
        match parsed {
            SessionLine::Header { version, config: c } => {
                if version != FORMAT_VERSION {
                    return Err(format!(
                        "`{}`: session format version {version} is not supported (expected {FORMAT_VERSION})",
                        path.display()
                    ));
                }
                if config.is_some() {
                    return Err(format!(
                        "`{}` line {}: a second header",
                        path.display(),
                        i + 1
                    ));
                }
                config = Some(c);
            }
            _ if config.is_none() => {
                return Err(format!(
                    "`{}` line {}: the header must come first",
                    path.display(),
                    i + 1
                ));
            }
            SessionLine::Event { tick, message } => {
                if events.last().is_some_and(|(t, _)| *t > tick) {
                    return Err(format!(
                        "`{}` line {}: events out of tick order",
                        path.display(),
                        i + 1
                    ));
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
    let config = config.ok_or_else(|| format!("`{}` has no header line", path.display()))?;
    let ticks = ticks.ok_or_else(|| {
        format!(
            "`{}` has no end line (the performance was cut short)",
            path.display()
        )
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

pub fn read_script(path: &Path) -> Result<Vec<ScriptEvent>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("//") {
            continue;
        }
        let ev: ScriptEvent = serde_json::from_str(t)
            .map_err(|e| format!("`{}` line {}: {e}", path.display(), i + 1))?;
        if !(ev.at.is_finite() && ev.at >= 0.0) {
            return Err(format!(
                "`{}` line {}: time {} is not a time in seconds",
                path.display(),
                i + 1,
                ev.at
            ));
        }
        out.push(ev);
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(out)
}
