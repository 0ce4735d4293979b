//! Session files: a performance as JSON lines — the initial configuration, then every control
//! event stamped with the tick it was applied at, and the clock (playhead and decode lead) of
//! every tick. Together with the seeds in the configuration these determine the output, so
//! `demon replay` re-renders a performance bit for bit. See `docs/session-format.md`.
//!
//! Crash safety: every line is flushed as it is written, so a killed server leaves a file whose
//! complete lines all count; reading one without an end line (or with a cut last line) replays
//! up to its last complete line and says so in [`SessionFile::warnings`]. Every header field and
//! event is checked when read: impossible values are refused, events that cannot be applied are
//! dropped with a warning naming them.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::control::ControlMessage;
use crate::core::SessionConfig;
use crate::error::{SessionError, SessionResult};

/// One clock line as replays follow it: tick, playhead, decode lead (frames), depth cap.
pub type ClockEntry = (u64, u64, u32, Option<usize>);

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
        /// The ring depth the real-time degrade policy allowed in this tick (absent: the
        /// `depth` knob's own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        depth_cap: Option<usize>,
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
        let mut w = Self::open(path)?;
        w.header(config)?;
        Ok(w)
    }

    /// Create the file without writing to it yet.
    pub fn open(path: &Path) -> SessionResult<Self> {
        let file = std::fs::File::create(path).map_err(|e| SessionError::io(path, e))?;
        Ok(Self {
            out: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
        })
    }

    /// The first line.
    pub fn header(&mut self, config: &SessionConfig) -> SessionResult<()> {
        self.line(&SessionLine::Header {
            version: FORMAT_VERSION,
            config: config.clone(),
        })
    }

    pub fn line(&mut self, line: &SessionLine) -> SessionResult<()> {
        let s = serde_json::to_string(line).map_err(|e| SessionError::io(&self.path, e))?;
        writeln!(self.out, "{s}")
            .and_then(|_| self.out.flush())
            .map_err(|e| SessionError::io(&self.path, e))
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
    pub clock: Vec<ClockEntry>,
    pub ticks: u64,
    /// What was cut short or dropped while reading (shown by `demon replay`).
    pub warnings: Vec<String>,
}

impl SessionFile {
    /// Refuse to run a session recorded with another backend than `backend` (its latents and
    /// seeds mean nothing to another model).
    pub fn check_backend(&self, backend: &str) -> SessionResult<()> {
        if self.config.backend != backend {
            return Err(SessionError::UnsupportedByBackend {
                backend: backend.to_string(),
                what: format!(
                    "a session recorded with the `{}` backend",
                    self.config.backend
                ),
            });
        }
        Ok(())
    }
}

/// The longest line read (a recorded source latent of 20 minutes is about 10 MB of base64).
pub const MAX_LINE_BYTES: usize = 64 << 20;
/// Prompt texts longer than this in an event are dropped.
pub const MAX_PROMPT_CHARS: usize = 4096;
/// The longest decode lead a clock line may carry (60 s of latent frames).
pub const MAX_LEAD_FRAMES: u32 = 25 * 60;

/// Refuse header values no session could have run with.
pub fn check_config(c: &SessionConfig) -> SessionResult<()> {
    let bad = |what: &str, problem: String| Err(SessionError::bad_value(what, problem));
    if !(64..=48_000).contains(&c.samples_per_tick) {
        return bad(
            "samples_per_tick",
            format!("{} is outside 64..=48000", c.samples_per_tick),
        );
    }
    let seconds = |what: &str, v: f64, lo_open: bool, hi: f64| -> SessionResult<()> {
        let lo_ok = if lo_open { v > 0.0 } else { v >= 0.0 };
        if v.is_finite() && lo_ok && v <= hi {
            Ok(())
        } else {
            let lo = if lo_open { "(0" } else { "[0" };
            bad(what, format!("{v} is outside {lo}, {hi}]"))
        }
    };
    seconds(
        "song_seconds",
        c.song_seconds,
        true,
        crate::render::MAX_SECONDS,
    )?;
    seconds(
        "window_seconds",
        c.window_seconds,
        false,
        crate::render::MAX_SECONDS,
    )?;
    seconds("keep_seconds", c.keep_seconds, true, 60.0)?;
    seconds("lead_seconds", c.lead_seconds, false, 60.0)?;
    seconds("slew_per_second", c.slew_per_second, false, 1000.0)?;
    if let Some(s) = c.idle_pause_seconds {
        seconds(
            "idle_pause_seconds",
            s,
            true,
            crate::core::MAX_IDLE_PAUSE_SECONDS,
        )?;
    }
    for (k, v) in &c.knobs {
        crate::controls::check_knob(k, *v)?;
    }
    Ok(())
}

/// Why an event cannot be replayed as recorded, if it cannot (checked before the session runs;
/// the runner checks the rest when it applies it).
fn event_problem(tick: u64, end: u64, m: &ControlMessage) -> Option<String> {
    if tick > end {
        return Some(format!("tick {tick} is after the end ({end})"));
    }
    match m {
        ControlMessage::SetKnob { name, value } => crate::controls::check_knob(name, *value)
            .err()
            .map(|e| e.to_string()),
        ControlMessage::SetKnobs { values } => values
            .iter()
            .find_map(|(k, v)| crate::controls::check_knob(k, *v).err())
            .map(|e| e.to_string()),
        ControlMessage::SetPrompt {
            prompt,
            prompt_b,
            negative,
            key,
            ..
        } => long_prompt([
            prompt.as_ref(),
            prompt_b.as_ref(),
            negative.as_ref(),
            key.as_ref(),
        ]),
        ControlMessage::LoadPreset { preset, .. } => {
            let p = &preset.prompts;
            long_prompt([
                Some(&p.prompt),
                p.prompt_b.as_ref(),
                p.negative.as_ref(),
                p.key.as_ref(),
            ])
        }
        _ => None,
    }
}

/// A prompt text over [`MAX_PROMPT_CHARS`], said as a problem.
fn long_prompt<'a>(texts: impl IntoIterator<Item = Option<&'a String>>) -> Option<String> {
    texts
        .into_iter()
        .flatten()
        .find(|t| t.chars().count() > MAX_PROMPT_CHARS)
        .map(|t| {
            format!(
                "a prompt of {} characters (limit {MAX_PROMPT_CHARS})",
                t.chars().count()
            )
        })
}

/// Read and check a session file; errors name the line. A file cut short (no end line, or a
/// last line cut mid-write) reads up to its last complete line, with a warning.
pub fn read_session(path: &Path) -> SessionResult<SessionFile> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| SessionError::io(path, e))?;
    let meta = file.metadata().map_err(|e| SessionError::io(path, e))?;
    if !meta.is_file() {
        return Err(SessionError::io(path, "not a regular file"));
    }
    let at = |i: usize| format!("`{}` line {}", path.display(), i + 1);
    let mut config: Option<SessionConfig> = None;
    let mut events = Vec::new();
    let mut clock: Vec<ClockEntry> = Vec::new();
    let mut ticks = None;
    let mut warnings = Vec::new();
    let mut reader = std::io::BufReader::new(file);
    let mut raw = Vec::new();
    for i in 0.. {
        raw.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut raw)
            .map_err(|e| SessionError::io(path, format!("line {}: {e}", i + 1)))?;
        if n == 0 {
            break;
        }
        if raw.len() > MAX_LINE_BYTES {
            return Err(SessionError::bad_value(
                at(i),
                format!("longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        let complete = raw.ends_with(b"\n");
        let line = String::from_utf8_lossy(&raw);
        if line.trim().is_empty() {
            continue;
        }
        let parsed: SessionLine = match serde_json::from_str(line.trim_end()) {
            Ok(p) => p,
            Err(_) if !complete && ticks.is_none() => {
                warnings.push(format!("{}: cut short mid-line; ignored", at(i)));
                break;
            }
            Err(e) => return Err(SessionError::bad_value(at(i), e.to_string())),
        };
        if ticks.is_some() {
            return Err(SessionError::bad_value(at(i), "a line after the end line"));
        }
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
                check_config(&c).map_err(|e| SessionError::bad_value(at(i), e.to_string()))?;
                config = Some(c);
            }
            _ if config.is_none() => {
                return Err(SessionError::bad_value(at(i), "the header must come first"));
            }
            SessionLine::Event { tick, message } => {
                if events.last().is_some_and(|(_, t, _)| *t > tick) {
                    return Err(SessionError::bad_value(at(i), "events out of tick order"));
                }
                events.push((i, tick, message));
            }
            SessionLine::Clock {
                tick,
                playhead,
                lead_frames,
                depth_cap,
            } => {
                if let Some(d) = depth_cap
                    && !(1..=demon_engine::MAX_DEPTH).contains(&d)
                {
                    return Err(SessionError::bad_value(
                        at(i),
                        format!("depth_cap {d} is outside 1..={}", demon_engine::MAX_DEPTH),
                    ));
                }
                if lead_frames > MAX_LEAD_FRAMES {
                    return Err(SessionError::bad_value(
                        at(i),
                        format!("lead_frames {lead_frames} is over {MAX_LEAD_FRAMES}"),
                    ));
                }
                if clock.last().is_some_and(|(t, _, _, _)| *t >= tick) {
                    return Err(SessionError::bad_value(
                        at(i),
                        "clock lines out of tick order",
                    ));
                }
                clock.push((tick, playhead, lead_frames, depth_cap));
            }
            SessionLine::End { ticks: t } => ticks = Some((i, t)),
        }
    }
    let whole = || format!("`{}`", path.display());
    let config = config.ok_or_else(|| SessionError::bad_value(whole(), "no header line"))?;
    // Every tick that ran wrote a clock line: the end cannot lie beyond the last one.
    let clocked = clock.last().map_or(0, |(t, _, _, _)| t + 1);
    let ticks = match ticks {
        Some((i, t)) => {
            if t == 0 || t > clocked {
                return Err(SessionError::bad_value(
                    at(i),
                    format!(
                        "end.ticks {t} is outside 1..={clocked} (the ticks the clock lines record)"
                    ),
                ));
            }
            t
        }
        None => {
            if clocked == 0 {
                return Err(SessionError::bad_value(
                    whole(),
                    "no end line and no tick recorded (the performance was cut short before it began)",
                ));
            }
            warnings.push(format!(
                "{}: no end line (the performance was cut short); replaying the {clocked} ticks recorded",
                whole()
            ));
            clocked
        }
    };
    let mut kept = Vec::with_capacity(events.len());
    for (i, tick, message) in events {
        match event_problem(tick, ticks, &message) {
            Some(problem) => warnings.push(format!("{}: event dropped: {problem}", at(i))),
            None => kept.push((tick, message)),
        }
    }
    Ok(SessionFile {
        config,
        events: kept,
        clock,
        ticks,
        warnings,
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
