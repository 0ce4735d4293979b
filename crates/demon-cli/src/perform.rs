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

use crate::args::{CfgMode, LibraryArgs, Solver, closed};
use crate::backends::{self, Backend, BackendArgs};

/// How a session starts (shared by `perform` and `serve`).
#[derive(Args, Debug, Clone)]
pub struct SessionArgs {
    /// What to make (prompt A): style words, mood, "124 bpm", "A minor"...
    #[arg(long, default_value = "house")]
    pub prompt: String,
    /// A second prompt, crossfaded in by the `blend` knob.
    #[arg(long = "prompt-b")]
    pub prompt_b: Option<String>,
    /// What to steer away from (acts only with the `guidance` knob above 1).
    #[arg(long)]
    pub negative: Option<String>,
    /// Tempo, 20..400; overrides the prompt and the style's default.
    #[arg(long, allow_negative_numbers = true)]
    pub bpm: Option<f32>,
    /// Key, e.g. "A minor", "F# major".
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
    /// ode or sde.
    #[arg(long, default_value = "ode", value_parser = closed::<Solver>("solver"))]
    pub solver: Solver,
    /// full, initialize or self.
    #[arg(long = "cfg-mode", default_value = "initialize", value_parser = closed::<CfgMode>("CFG mode"))]
    pub cfg_mode: CfgMode,
    /// Kept window of each windowed decode, in seconds.
    #[arg(long = "keep-seconds", default_value_t = 0.36)]
    pub keep_seconds: f64,
    /// How far ahead of the playhead to decode, in seconds.
    #[arg(long = "lead-seconds", default_value_t = 0.5)]
    pub lead_seconds: f64,
    /// Adapt the lead to measured tick, decode and delivery times (`serve` always does,
    /// unless --fixed-lead).
    #[arg(long = "adaptive-lead")]
    pub adaptive_lead: bool,
    /// Knob slew rate in full ranges per second (0: off).
    #[arg(long, default_value_t = 4.0)]
    pub slew: f64,
    /// Idle pause: after this many seconds without a control (or a moving automation lane)
    /// no new generations start and the loop plays on; one loop later decoding stops too.
    /// The next control resumes. Off unless given.
    #[arg(
        long = "idle-pause-s",
        env = "DEMON_IDLE_PAUSE_S",
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub idle_pause_s: Option<f64>,
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

    /// What can be checked before a model loads: the prompt's fields and the source file.
    pub fn check(&self) -> Result<()> {
        let max = demon_live::core::MAX_IDLE_PAUSE_SECONDS;
        if let Some(s) = self.idle_pause_s
            && !(s.is_finite() && s > 0.0 && s <= max)
        {
            bail!("--idle-pause-s {s}: give seconds in (0, {max}]");
        }
        self.prompt().validate()?;
        crate::args::source_file(self.source.as_deref())
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
            idle_pause_seconds: self.idle_pause_s,
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
    /// Output WAV of what was played (48 kHz stereo).
    #[arg(long, short = 'o', value_name = "WAV")]
    pub out: Option<PathBuf>,
    /// Run as fast as possible instead of in real time.
    #[arg(long)]
    pub fast: bool,
    /// Also play through the system audio device when there is one.
    #[arg(long)]
    pub device: bool,
    #[command(flatten)]
    pub library: LibraryArgs,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn perform(args: PerformArgs) -> Result<()> {
    crate::args::existing_file("--script", &args.script)?;
    args.session.check()?;
    let mut backend = backends::build(&args.backend)?;
    let has_files = backend
        .set
        .denoiser
        .adapters()
        .is_some_and(|a| a.files().is_some());
    let lora_dirs = args.library.dirs(has_files)?;
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
        lora_dirs,
    )?;
    eprintln!(
        "{} ticks, {} generations, {:.1} s played",
        summary.ticks, summary.generations, summary.played_seconds
    );
    if summary.rejected_events > 0 {
        eprintln!(
            "{} of {} scripted events were rejected (each is named above); the rest applied",
            summary.rejected_events,
            script.len()
        );
    }
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
    if let Some(why) = no_sound_card() {
        eprintln!("audio: no sound card ({why}); using the clock-paced null sink");
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

/// Why this machine has no sound card to open, found without asking alsa-lib (whose failed
/// probes print raw `ALSA lib ...` lines of their own); `None` where there may be one. Only
/// Linux is checked: elsewhere the device is simply tried.
#[cfg_attr(not(feature = "device"), allow(dead_code))]
pub fn no_sound_card() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    let mut servers: Vec<PathBuf> = runtime
        .iter()
        .flat_map(|r| [r.join("pulse/native"), r.join("pipewire-0")])
        .collect();
    if let Some(p) = std::env::var_os("PULSE_SERVER") {
        servers.push(PathBuf::from(p));
    }
    no_sound_card_in(std::path::Path::new("/dev/snd"), &servers)
}

/// [`no_sound_card`] for a `/dev/snd` folder and the sound servers' sockets (PulseAudio and
/// PipeWire play without a local card, e.g. in a container).
#[cfg_attr(not(feature = "device"), allow(dead_code))]
fn no_sound_card_in(dev_snd: &std::path::Path, servers: &[PathBuf]) -> Option<String> {
    if servers.iter().any(|s| s.exists()) {
        return None;
    }
    let Ok(entries) = std::fs::read_dir(dev_snd) else {
        return Some(format!("no {}", dev_snd.display()));
    };
    // Playback PCMs are `pcmC<card>D<device>p`.
    let playback = entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("pcmC") && name.ends_with('p')
    });
    (!playback).then(|| format!("no playback device in {}", dev_snd.display()))
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
    /// Output WAV of the re-rendered session (48 kHz stereo).
    #[arg(long, short = 'o', value_name = "WAV")]
    pub out: PathBuf,
    /// Render at most this many seconds (default: the recorded length).
    #[arg(long = "max-seconds")]
    pub max_seconds: Option<f64>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn replay(args: ReplayArgs) -> Result<()> {
    crate::args::existing_file("the session file", &args.session)?;
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
    use super::{missing_features, no_sound_card_in};

    #[test]
    fn a_machine_without_a_playback_device_is_seen_without_alsa() {
        let root = std::env::temp_dir().join(format!("demon-snd-{}", std::process::id()));
        let snd = root.join("snd");
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(
            no_sound_card_in(&snd, &[]),
            Some(format!("no {}", snd.display()))
        );
        std::fs::create_dir_all(&snd).unwrap();
        std::fs::write(snd.join("controlC0"), b"").unwrap();
        std::fs::write(snd.join("pcmC0D0c"), b"").unwrap();
        assert_eq!(
            no_sound_card_in(&snd, &[]),
            Some(format!("no playback device in {}", snd.display())),
            "a capture device is no playback device"
        );
        let socket = root.join("pulse-native");
        assert!(no_sound_card_in(&snd, std::slice::from_ref(&socket)).is_some());
        std::fs::write(&socket, b"").unwrap();
        assert_eq!(
            no_sound_card_in(&snd, &[socket]),
            None,
            "a sound server plays"
        );
        std::fs::write(snd.join("pcmC0D0p"), b"").unwrap();
        assert_eq!(no_sound_card_in(&snd, &[]), None);
        let _ = std::fs::remove_dir_all(&root);
    }

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
