//! `demon perform` (a headless live performance from a script) and `demon replay` (its exact
//! offline re-render).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use demon_engine::Prompt;
use demon_live::BackendFacts;
use demon_live::control::{ControlMessage, SourceSpec};
use demon_live::core::SessionConfig;
use demon_live::record::{ScriptEvent, read_script, read_session};
use demon_live::sink::AudioSink;

use crate::args::{CfgMode, Solver, closed};
use crate::backends::{self, Backend, BackendArgs};

/// How a session starts (shared by `perform` and `serve`).
#[derive(Args, Debug, Clone)]
pub struct SessionArgs {
    #[arg(long, default_value = "house")]
    pub prompt: String,
    #[arg(long = "prompt-b")]
    pub prompt_b: Option<String>,
    #[arg(long)]
    pub negative: Option<String>,
    #[arg(long)]
    pub bpm: Option<f32>,
    #[arg(long)]
    pub key: Option<String>,
    /// Source: an audio file (a `demon` render is used exactly) or `library:STYLE[:N]`.
    #[arg(long)]
    pub source: Option<String>,
    /// Song length without a source, in seconds (60, 120, 240 or any other).
    #[arg(long = "song-seconds", default_value_t = 60.0)]
    pub song_seconds: f64,
    /// Generate songs longer than this through a sliding window (0: never).
    #[arg(long = "window-seconds", default_value_t = 0.0)]
    pub window_seconds: f64,
    /// Initial knob values, repeatable: NAME=VALUE (see `list_knobs`).
    #[arg(long = "knob", value_name = "NAME=VALUE")]
    pub knobs: Vec<String>,
    #[arg(long, default_value = "ode", value_parser = closed::<Solver>("solver"))]
    pub solver: Solver,
    #[arg(long = "cfg-mode", default_value = "initialize", value_parser = closed::<CfgMode>("CFG mode"))]
    pub cfg_mode: CfgMode,
    /// Kept window of each windowed decode, in seconds.
    #[arg(long = "keep-seconds", default_value_t = 0.36)]
    pub keep_seconds: f64,
    /// How far ahead of the playhead to decode, in seconds.
    #[arg(long = "lead-seconds", default_value_t = 0.5)]
    pub lead_seconds: f64,
    /// Grow the lead from measured tick and decode times.
    #[arg(long = "adaptive-lead")]
    pub adaptive_lead: bool,
    /// Knob slew rate in full ranges per second (0: off).
    #[arg(long, default_value_t = 4.0)]
    pub slew: f64,
}

impl SessionArgs {
    /// The prompt the session starts with.
    pub fn prompt(&self) -> Prompt {
        Prompt {
            tags: self.prompt.clone(),
            bpm: self.bpm,
            key: self.key.clone(),
            ..Default::default()
        }
    }

    /// Latent frames of the song without a source.
    pub fn song_frames(&self, backend: &mut Backend) -> usize {
        BackendFacts::of(&mut backend.set).frames(self.song_seconds)
    }

    pub fn config(&self, backend: &mut Backend) -> Result<SessionConfig> {
        let mut knobs = BTreeMap::new();
        for k in &self.knobs {
            let (name, value) = k
                .split_once('=')
                .ok_or_else(|| anyhow!("--knob `{k}` is not NAME=VALUE"))?;
            let v: f64 = value
                .trim()
                .parse()
                .map_err(|_| anyhow!("--knob `{k}`: `{value}` is not a number"))?;
            knobs.insert(
                name.trim().to_string(),
                demon_live::controls::check_knob(name.trim(), v)?,
            );
        }
        let prompt = self.prompt();
        prompt.validate()?;
        let frames = self.song_frames(backend);
        let source = match &self.source {
            Some(s) => {
                backend
                    .sources
                    .latent_spec(s, &prompt, frames, backend.set.codec.as_mut())?
            }
            None => SourceSpec::None,
        };
        Ok(SessionConfig {
            backend: backend.set.name.clone(),
            prompt: self.prompt.clone(),
            prompt_b: self.prompt_b.clone(),
            negative: self.negative.clone(),
            bpm: self.bpm,
            key: self.key.clone(),
            source,
            song_seconds: self.song_seconds,
            window_seconds: self.window_seconds,
            keep_seconds: self.keep_seconds,
            lead_seconds: self.lead_seconds,
            adaptive_lead: self.adaptive_lead,
            knobs,
            solver: self.solver.into(),
            cfg_mode: self.cfg_mode.into(),
            slew_per_second: self.slew,
            ..Default::default()
        })
    }
}

/// Resolve file and library sources inside script messages (to latents: a session file never
/// depends on a file).
fn resolve_script(
    backend: &mut Backend,
    events: Vec<ScriptEvent>,
    prompt: &Prompt,
    frames: usize,
) -> Result<Vec<ScriptEvent>> {
    events
        .into_iter()
        .map(|mut e| {
            if let ControlMessage::SetSource { source } = &e.message {
                let text = match source {
                    SourceSpec::File { path } => Some(path.clone()),
                    SourceSpec::Library { style, index } => {
                        Some(format!("library:{style}:{index}"))
                    }
                    _ => None,
                };
                if let Some(t) = text {
                    e.message = ControlMessage::SetSource {
                        source: backend
                            .sources
                            .latent_spec(&t, prompt, frames, backend.set.codec.as_mut())
                            .with_context(|| format!("script source at {} s", e.at))?,
                    };
                }
            }
            Ok(e)
        })
        .collect()
}

#[derive(Args, Debug)]
pub struct PerformArgs {
    /// Timed control events, JSON lines: {"at": SECONDS, "message": {...}}.
    #[arg(long)]
    pub script: PathBuf,
    /// Length of the performance in seconds.
    #[arg(long)]
    pub seconds: f64,
    /// Record the session (initial config + every event by tick) here.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// WAV of what was played.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run as fast as possible instead of in real time.
    #[arg(long)]
    pub fast: bool,
    /// Also play through the system audio device when there is one.
    #[arg(long)]
    pub device: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn perform(args: PerformArgs) -> Result<()> {
    let mut backend = backends::build(&args.backend)?;
    let config = args.session.config(&mut backend)?;
    let prompt = args.session.prompt();
    let frames = args.session.song_frames(&mut backend);
    let script = read_script(&args.script)?;
    let script = resolve_script(&mut backend, script, &prompt, frames)?;
    let sinks = vec![choose_sink(args.device, "headless")];
    if let Some(line) = missing_features(false) {
        eprintln!("{line}");
    }
    eprintln!(
        "performing {:.1} s, {} scripted events...",
        args.seconds,
        script.len()
    );
    let summary = demon_live::perform::perform(
        config,
        backend.set,
        &script,
        args.seconds,
        args.record.as_deref(),
        args.out.as_deref(),
        !args.fast,
        sinks,
    )?;
    eprintln!(
        "{} ticks, {} generations, {:.1} s played",
        summary.ticks, summary.generations, summary.played_seconds
    );
    if let Some(r) = &args.record {
        eprintln!("session recorded to {}", r.display());
    }
    if let Some(o) = &args.out {
        eprintln!("wrote {}", o.display());
    }
    Ok(())
}

/// The system audio device when `device` is asked for and there is one, else the clock-paced
/// null sink; one line says which (`headless_note` says who plays the sound instead).
pub fn choose_sink(device: bool, headless_note: &str) -> Box<dyn AudioSink> {
    if !device {
        eprintln!(
            "audio: clock-paced null sink ({headless_note}; --device plays through the sound card)"
        );
        return Box::new(demon_live::sink::NullSink::default());
    }
    #[cfg(feature = "device")]
    match demon_live::sink::device::open_device(48_000) {
        Ok(d) => {
            eprintln!("audio: playing through {}", d.name());
            Box::new(d)
        }
        Err(e) => {
            eprintln!("audio: no sound card ({e}); using the clock-paced null sink");
            Box::new(demon_live::sink::NullSink::default())
        }
    }
    #[cfg(not(feature = "device"))]
    {
        eprintln!(
            "audio: this binary was built without sound-card output; using the clock-paced null sink"
        );
        Box::new(demon_live::sink::NullSink::default())
    }
}

/// One line naming the optional parts this binary was built without (sound-card output, and
/// MIDI input when `with_midi`) and how to build them in; `None` when nothing is missing. Both
/// link ALSA on Linux, which is why the default build leaves them out.
pub fn missing_features(with_midi: bool) -> Option<String> {
    let mut missing: Vec<(&str, &str)> = Vec::new();
    if cfg!(not(feature = "device")) {
        missing.push(("device", "sound-card output"));
    }
    if with_midi && cfg!(not(feature = "midi")) {
        missing.push(("midi", "MIDI input"));
    }
    if missing.is_empty() {
        return None;
    }
    let what: Vec<&str> = missing.iter().map(|m| m.1).collect();
    let features: Vec<&str> = missing.iter().map(|m| m.0).collect();
    let (them, features) = match features.as_slice() {
        [one] => ("it", *one),
        _ => ("them", "full"),
    };
    Some(format!(
        "build: this binary has no {} (to add {them}: sudo apt-get install pkg-config \
         libasound2-dev, then build with --features {features})",
        what.join(" or "),
    ))
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A session file recorded by `demon perform --record` or `demon serve`.
    pub session: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Render at most this many seconds (default: the recorded length).
    #[arg(long = "max-seconds")]
    pub max_seconds: Option<f64>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn replay(args: ReplayArgs) -> Result<()> {
    let mut file = read_session(&args.session)?;
    for w in &file.warnings {
        eprintln!("replay: {w}");
    }
    if let Some(s) = args.max_seconds {
        if !(s.is_finite() && s > 0.0) {
            bail!("--max-seconds {s} is not a positive number of seconds");
        }
        let per_tick = file.config.samples_per_tick as f64 / 48_000.0;
        file.ticks = file.ticks.min((s / per_tick).ceil() as u64);
    }
    let backend = backends::build(&args.backend)?.set;
    if file.config.backend != backend.name {
        bail!(
            "the session was recorded with the `{}` backend; pass --backend {}",
            file.config.backend,
            file.config.backend
        );
    }
    let t0 = std::time::Instant::now();
    let summary = demon_live::perform::replay(&file, backend, &args.out)?;
    eprintln!(
        "replayed {} ticks ({} events) in {:.1} s; wrote {} ({:.1} s)",
        summary.ticks,
        file.events.len(),
        t0.elapsed().as_secs_f64(),
        args.out.display(),
        summary.played_seconds
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::missing_features;

    #[test]
    fn the_build_line_names_exactly_what_this_binary_lacks() {
        let apt = "sudo apt-get install pkg-config libasound2-dev";
        let with_midi = missing_features(true);
        match (cfg!(feature = "device"), cfg!(feature = "midi")) {
            (true, true) => assert_eq!(with_midi, None),
            (false, false) => {
                let line = with_midi.expect("both are missing");
                assert!(
                    line.contains("no sound-card output or MIDI input"),
                    "{line}"
                );
                assert!(
                    line.contains(apt) && line.ends_with("--features full)"),
                    "{line}"
                );
            }
            (false, true) => {
                let line = with_midi.expect("device output is missing");
                assert!(
                    line.contains("no sound-card output (to add it")
                        && line.ends_with("--features device)")
                );
            }
            (true, false) => {
                let line = with_midi.expect("MIDI is missing");
                assert!(
                    line.contains("no MIDI input (to add it") && line.ends_with("--features midi)")
                );
            }
        }
        // A command without MIDI (perform) never mentions it.
        let without_midi = missing_features(false);
        assert_eq!(without_midi.is_none(), cfg!(feature = "device"));
        if let Some(line) = without_midi {
            assert!(!line.contains("MIDI"), "{line}");
            assert!(
                line.contains(apt) && line.ends_with("--features device)"),
                "{line}"
            );
        }
    }
}
