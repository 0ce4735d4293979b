//! `LiveCore`: one live session's state and its deterministic tick, without threads.
//!
//! The runner thread (`session`) and the offline replayer both drive this same core, which is why
//! a replay is exact: a tick's output is a function of the configuration, the control events
//! applied before it and the clock (playhead, decode lead) it ran with, nothing else.
//!
//! One tick: advance slew limiting → update the shared lane → submit one request built from the
//! current controls → one pipeline tick → take finished latents → decode the window at the
//! playhead + lead (skipped when nothing there is stale) → read one block of played audio.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use candle_core::Tensor;
use demon_engine::{
    BackendSet, CfgMode, ChannelGain, Conditioning, Curve, CurveSpec, DcwMode, DcwSettings, Prompt,
    ReceptiveField, STEP_CURVE_NAMES, SharedLane, SlotCondition, SlotRequest, SolverKind,
    StreamPipeline, measure_receptive_field, probe_latents,
};
use serde::{Deserialize, Serialize};

use crate::control::{CURVE_NAMES, ControlMessage, KnobState, LORA_PREFIX, SourceSpec, check_knob};
use crate::decode::WindowedDecoder;
use crate::error::{SessionError, SessionResult};
use crate::loopbuf::{LoopBand, LoopBuffer};

/// Everything a session starts from (recorded as the header of a session file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    pub backend: String,
    pub prompt: String,
    pub prompt_b: Option<String>,
    pub negative: Option<String>,
    pub bpm: Option<f32>,
    pub key: Option<String>,
    /// Initial source (already resolved to audio or a latent by the front end).
    pub source: SourceSpec,
    /// Song length when there is no source.
    pub song_seconds: f64,
    /// Songs longer than this are generated through a sliding window of this length (0: never).
    pub window_seconds: f64,
    /// Audio played per tick: the session clock.
    pub samples_per_tick: usize,
    /// Kept window of each windowed decode.
    pub keep_seconds: f64,
    /// How far ahead of the playhead windows are decoded.
    pub lead_seconds: f64,
    /// Grow the lead from measured tick and decode times.
    pub adaptive_lead: bool,
    /// Initial knob values (the catalog's defaults otherwise).
    pub knobs: BTreeMap<String, f64>,
    pub solver: SolverKind,
    pub cfg_mode: CfgMode,
    pub slew_per_second: f64,
    pub playing: bool,
    /// Receptive field of the codec; measured at start when absent.
    pub receptive_field: Option<ReceptiveField>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            backend: "sketch".into(),
            prompt: "house".into(),
            prompt_b: None,
            negative: None,
            bpm: None,
            key: None,
            source: SourceSpec::None,
            song_seconds: 60.0,
            window_seconds: 0.0,
            samples_per_tick: 1920,
            keep_seconds: 0.36,
            lead_seconds: 0.5,
            adaptive_lead: false,
            knobs: BTreeMap::new(),
            solver: SolverKind::Ode,
            cfg_mode: CfgMode::Initialize,
            slew_per_second: 4.0,
            playing: true,
            receptive_field: None,
        }
    }
}

/// Instrumentation shared with other threads: which tick is running and how many control
/// changes have been applied. Read by tests and status endpoints.
#[derive(Debug, Default)]
pub struct SessionProbe {
    pub tick: AtomicU64,
    pub control_version: AtomicU64,
}

/// Conditionings for the current prompts and source.
struct Conds {
    a: Conditioning,
    a_timbre: Option<Conditioning>,
    b: Option<(Conditioning, Option<Conditioning>)>,
    negative: Conditioning,
}

/// What one tick produced.
pub struct TickOutput {
    pub tick: u64,
    /// Audio played this tick (empty when stopped).
    pub played: [Vec<f32>; 2],
    /// Windows patched into the loop: (start sample, planar audio).
    pub patches: Vec<(u64, Arc<Vec<Vec<f32>>>)>,
    /// The whole loop was replaced (first generation, new source).
    pub replaced: bool,
    pub finished: usize,
    pub tick_ms: f32,
    pub decode_ms: f32,
    pub playhead: u64,
    pub lead_frames: u32,
    pub active_slots: usize,
    pub queue: usize,
    pub knobs_changed: bool,
}

/// A decoded source.
#[derive(Clone)]
struct Source {
    name: String,
    /// `[1, T, C]`.
    latent: Tensor,
}

/// One live session's state.
pub struct LiveCore {
    cfg: SessionConfig,
    backend: BackendSet,
    pipeline: StreamPipeline,
    pub knobs: KnobState,
    curves: BTreeMap<String, CurveSpec>,
    prompt: Prompt,
    prompt_b: Option<String>,
    negative: Option<String>,
    conds: Option<Conds>,
    solver: SolverKind,
    cfg_mode: CfgMode,
    dcw_enabled: bool,
    dcw_mode: DcwMode,
    source: Option<Source>,
    song_frames: usize,
    window_frames: usize,
    chunk_offset: usize,
    history: VecDeque<Tensor>,
    latest: Option<Tensor>,
    version: u64,
    decoder: WindowedDecoder,
    buffer: LoopBuffer,
    buffer_filled: bool,
    lead_frames: u32,
    cost_ema_ms: f64,
    tick: u64,
    playing: bool,
    loras: BTreeMap<String, f64>,
    generations: u64,
    context_cache: Option<(u64, usize, u64, Tensor)>,
    source_version: u64,
    /// Bumped when the song's length or window changes: generations started before are not
    /// this song's and are dropped when they finish.
    song_epoch: u64,
    lane: SharedLane,
    hop: usize,
    pub probe: Arc<SessionProbe>,
    last_tick_ms: f32,
    last_decode_ms: f32,
}

fn b64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

fn b64_decode(s: &str) -> SessionResult<Vec<u8>> {
    let val = |c: u8| -> SessionResult<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => {
                return Err(SessionError::bad_value(
                    "base64",
                    format!("invalid character `{}`", c as char),
                ));
            }
        } as u32)
    };
    let b = s.trim().as_bytes();
    if !b.len().is_multiple_of(4) {
        return Err(SessionError::bad_value(
            "base64",
            "length is not a multiple of 4",
        ));
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for c in b.chunks(4) {
        let pad = c.iter().rev().take_while(|x| **x == b'=').count();
        let mut n = 0u32;
        for (i, x) in c.iter().enumerate() {
            n |= if *x == b'=' { 0 } else { val(*x)? } << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if pad < 2 {
            out.push((n >> 8) as u8);
        }
        if pad < 1 {
            out.push(n as u8);
        }
    }
    Ok(out)
}

/// A latent as a `SourceSpec::Latent` (for recordings and the wire).
pub fn latent_spec(name: &str, latent: &Tensor) -> SessionResult<SourceSpec> {
    let (_, frames, channels) = latent.dims3()?;
    let v: Vec<f32> = latent.flatten_all().and_then(|t| t.to_vec1())?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(SourceSpec::Latent {
        name: name.into(),
        frames,
        channels,
        data_b64: b64_encode(&bytes),
    })
}

impl LiveCore {
    /// Build a session; measures the codec's receptive field unless the config gives it.
    pub fn new(cfg: SessionConfig, mut backend: BackendSet) -> SessionResult<Self> {
        backend
            .validate()
            .map_err(|e| SessionError::engine("backend", e))?;
        if cfg.samples_per_tick == 0 || cfg.samples_per_tick > 48_000 {
            return Err(SessionError::bad_value(
                "samples_per_tick",
                format!("{} is outside 1..=48000", cfg.samples_per_tick),
            ));
        }
        if !(cfg.song_seconds.is_finite()
            && cfg.song_seconds > 0.0
            && cfg.song_seconds <= crate::render::MAX_SECONDS)
        {
            return Err(SessionError::bad_value(
                "song length",
                format!(
                    "{} s is outside (0, {}]",
                    cfg.song_seconds,
                    crate::render::MAX_SECONDS
                ),
            ));
        }
        let hop = backend.codec.hop_samples();
        let field = match cfg.receptive_field {
            Some(f) => f,
            None => {
                let c = backend.codec.latent_channels();
                let probes = probe_latents(100, c, backend.codec.device())?;
                measure_receptive_field(backend.codec.as_mut(), &probes, 9, 3, 32, 1e-6)?
            }
        };
        let depth = cfg.knobs.get("depth").copied().unwrap_or(4.0) as usize;
        let pipeline = StreamPipeline::for_denoiser(depth.clamp(1, 8), backend.denoiser.as_ref())?;
        let mut knobs = KnobState {
            slew_per_second: cfg.slew_per_second,
            ..Default::default()
        };
        for (k, v) in &cfg.knobs {
            let v = check_knob(k, *v)?;
            knobs.target.insert(k.clone(), v);
            knobs.effective.insert(k.clone(), v);
        }
        let song_frames = (cfg.song_seconds * 25.0).round() as usize;
        let keep = ((cfg.keep_seconds * 25.0).round() as usize).max(1);
        let lead_frames = (cfg.lead_seconds * 25.0).round().max(0.0) as u32;
        let sr = backend.codec.sample_rate();
        let mut core = Self {
            prompt: Prompt {
                tags: cfg.prompt.clone(),
                bpm: cfg.bpm,
                key: cfg.key.clone(),
                ..Default::default()
            },
            prompt_b: cfg.prompt_b.clone(),
            negative: cfg.negative.clone(),
            solver: cfg.solver,
            cfg_mode: cfg.cfg_mode,
            playing: cfg.playing,
            decoder: WindowedDecoder::new(field, keep, hop, song_frames),
            buffer: LoopBuffer::new(sr, song_frames * hop),
            cfg,
            backend,
            pipeline,
            knobs,
            curves: BTreeMap::new(),
            conds: None,
            dcw_enabled: true,
            dcw_mode: DcwMode::Double,
            source: None,
            song_frames,
            window_frames: song_frames,
            chunk_offset: 0,
            history: VecDeque::new(),
            latest: None,
            version: 0,
            buffer_filled: false,
            lead_frames,
            cost_ema_ms: 0.0,
            tick: 0,
            loras: BTreeMap::new(),
            generations: 0,
            context_cache: None,
            source_version: 0,
            song_epoch: 0,
            lane: SharedLane::default(),
            hop,
            probe: Arc::new(SessionProbe::default()),
            last_tick_ms: 0.0,
            last_decode_ms: 0.0,
        };
        core.prompt.validate()?;
        core.cfg.receptive_field = Some(field);
        let source = core.cfg.source.clone();
        if source != SourceSpec::None {
            // Recordings keep the resolved latent, never the file or audio it came from.
            core.cfg.source = core.set_source(&source)?;
        } else {
            core.resize_song(song_frames);
        }
        core.rebuild_conds()?;
        Ok(core)
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn backend(&mut self) -> &mut BackendSet {
        &mut self.backend
    }

    pub fn pipeline(&self) -> &StreamPipeline {
        &self.pipeline
    }

    pub fn buffer(&self) -> &LoopBuffer {
        &self.buffer
    }

    pub fn tick_index(&self) -> u64 {
        self.tick
    }

    pub fn receptive_field(&self) -> ReceptiveField {
        self.decoder.field
    }

    pub fn song_frames(&self) -> usize {
        self.song_frames
    }

    pub fn sample_rate(&self) -> u32 {
        self.buffer.sample_rate
    }

    pub fn generations(&self) -> u64 {
        self.generations
    }

    fn resize_song(&mut self, frames: usize) {
        self.song_epoch += 1;
        self.song_frames = frames;
        let max_window = (self.cfg.window_seconds * 25.0).round() as usize;
        self.window_frames = if max_window > 0 && frames > max_window {
            max_window
        } else {
            frames
        };
        self.chunk_offset = 0;
        self.decoder = WindowedDecoder::new(
            self.decoder.field,
            self.decoder.keep_frames,
            self.hop,
            frames,
        );
        self.buffer = LoopBuffer::new(self.buffer.sample_rate, frames * self.hop);
        self.buffer_filled = false;
        self.history.clear();
        self.latest = None;
        self.context_cache = None;
    }

    /// Decode a source spec into a latent and make it the session's source; the loop buffer
    /// starts as the source's own audio. On error nothing changes.
    fn set_source(&mut self, spec: &SourceSpec) -> SessionResult<SourceSpec> {
        let c = self.backend.codec.latent_channels();
        let device = self.backend.codec.device().clone();
        let (name, latent) = match spec {
            SourceSpec::None => {
                self.source = None;
                self.source_version += 1;
                let frames = (self.cfg.song_seconds * 25.0).round() as usize;
                self.resize_song(frames);
                self.rebuild_conds()?;
                return Ok(SourceSpec::None);
            }
            SourceSpec::Library { style, index } => {
                return Err(SessionError::bad_source(
                    format!("library:{style}:{index}"),
                    "library and file sources are resolved by the front end before they reach the session",
                ));
            }
            SourceSpec::File { path } => {
                return Err(SessionError::bad_source(
                    path.clone(),
                    "library and file sources are resolved by the front end before they reach the session",
                ));
            }
            SourceSpec::Audio { name, channels } => {
                let audio = demon_engine::Audio::new(self.buffer.sample_rate, channels.clone())
                    .map_err(|e| SessionError::bad_source(name.clone(), e))?;
                if audio.frames() < self.hop {
                    return Err(SessionError::bad_source(
                        name.clone(),
                        "shorter than one latent frame",
                    ));
                }
                let latent = self
                    .backend
                    .codec
                    .encode(&audio)
                    .map_err(|e| SessionError::bad_source(name.clone(), e))?;
                (name.clone(), latent)
            }
            SourceSpec::Latent {
                name,
                frames,
                channels,
                data_b64,
            } => {
                if *channels != c {
                    return Err(SessionError::bad_source(
                        name.clone(),
                        format!("has {channels} latent channels; this backend uses {c}"),
                    ));
                }
                if *frames == 0 || *frames as f64 / 25.0 > crate::render::MAX_SECONDS {
                    return Err(SessionError::bad_source(
                        name.clone(),
                        format!("{frames} frames is not a usable length"),
                    ));
                }
                let bytes =
                    b64_decode(data_b64).map_err(|e| SessionError::bad_source(name.clone(), e))?;
                if bytes.len() != frames * channels * 4 {
                    return Err(SessionError::bad_source(
                        name.clone(),
                        format!("{} bytes for {frames}×{channels} floats", bytes.len()),
                    ));
                }
                let v: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(SessionError::bad_source(
                        name.clone(),
                        "contains non-finite values",
                    ));
                }
                (
                    name.clone(),
                    Tensor::from_vec(v, (1, *frames, *channels), &device)?,
                )
            }
        };
        let frames = latent.dim(1)?;
        if frames as f64 / 25.0 > crate::render::MAX_SECONDS {
            return Err(SessionError::bad_source(
                name,
                format!("longer than {} s", crate::render::MAX_SECONDS),
            ));
        }
        let audio = self
            .backend
            .codec
            .decode(&latent, 0)
            .map_err(|e| SessionError::bad_source(name.clone(), e))?;
        let previous = (self.source.clone(), self.song_frames);
        self.source = Some(Source {
            name: name.clone(),
            latent: latent.clone(),
        });
        self.source_version += 1;
        if let Err(e) = self.rebuild_conds() {
            self.source = previous.0;
            return Err(e);
        }
        self.resize_song(frames);
        let mut ch = audio.channels.into_iter();
        let (l, r) = (ch.next().unwrap_or_default(), ch.next().unwrap_or_default());
        let r = if r.is_empty() { l.clone() } else { r };
        self.buffer.replace([l, r]);
        self.decoder.mark_all(0);
        latent_spec(&name, &latent)
    }

    fn rebuild_conds(&mut self) -> SessionResult<()> {
        let cond = &mut self.backend.conditioner;
        let timbre_ref = self.source.as_ref().map(|s| s.latent.clone());
        let with_timbre = |cond: &mut Box<dyn demon_engine::Conditioner>,
                           p: &Prompt|
         -> SessionResult<Option<Conditioning>> {
            match &timbre_ref {
                Some(r) => cond
                    .condition_with_timbre(p, r)
                    .map(Some)
                    .map_err(|e| SessionError::engine("timbre", e)),
                None => Ok(None),
            }
        };
        let a = cond
            .condition(&self.prompt)
            .map_err(|e| SessionError::engine("prompt", e))?;
        let a_timbre = with_timbre(cond, &self.prompt)?;
        let b = match &self.prompt_b {
            Some(text) => {
                let p = Prompt {
                    tags: text.clone(),
                    ..self.prompt.clone()
                };
                let c = cond
                    .condition(&p)
                    .map_err(|e| SessionError::engine("prompt B", e))?;
                Some((c, with_timbre(cond, &p)?))
            }
            None => None,
        };
        let negative = match &self.negative {
            Some(text) => cond
                .condition(&Prompt {
                    tags: text.clone(),
                    ..self.prompt.clone()
                })
                .map_err(|e| SessionError::engine("negative prompt", e))?,
            None => cond.null_condition(&a)?,
        };
        self.conds = Some(Conds {
            a,
            a_timbre,
            b,
            negative,
        });
        Ok(())
    }

    /// Apply one control message between ticks. Returns the message as it should be recorded
    /// (sources resolved to latents). On error the session is unchanged.
    pub fn apply(&mut self, msg: &ControlMessage) -> SessionResult<ControlMessage> {
        let recorded = self.apply_inner(msg)?;
        self.probe.control_version.fetch_add(1, Ordering::AcqRel);
        Ok(recorded)
    }

    fn apply_inner(&mut self, msg: &ControlMessage) -> SessionResult<ControlMessage> {
        match msg {
            ControlMessage::SetKnob { name, value } => {
                let v = check_knob(name, *value)?;
                self.set_knob(name, v)?;
            }
            ControlMessage::SetKnobs { values } => {
                let checked = values
                    .iter()
                    .map(|(k, v)| check_knob(k, *v).map(|v| (k.clone(), v)))
                    .collect::<Result<Vec<_>, _>>()?;
                for (k, _) in &checked {
                    if let Some(id) = k.strip_prefix(LORA_PREFIX) {
                        self.check_lora(id)?;
                    }
                }
                for (k, v) in checked {
                    self.set_knob(&k, v)?;
                }
            }
            ControlMessage::SetCurve { name, curve } => {
                if !CURVE_NAMES.contains(&name.as_str()) {
                    return Err(SessionError::UnknownCurve {
                        name: name.clone(),
                        known: CURVE_NAMES.join(", "),
                    });
                }
                match curve {
                    Some(spec) => {
                        let c = spec.to_curve(name, self.window_frames)?;
                        check_curve_range(name, &c)?;
                        self.curves.insert(name.clone(), spec.clone());
                    }
                    None => {
                        self.curves.remove(name);
                    }
                }
            }
            ControlMessage::SetPrompt {
                prompt,
                prompt_b,
                negative,
                bpm,
                key,
            } => {
                let saved = (
                    self.prompt.clone(),
                    self.prompt_b.clone(),
                    self.negative.clone(),
                );
                if let Some(p) = prompt {
                    self.prompt.tags = p.clone();
                }
                if let Some(b) = bpm {
                    self.prompt.bpm = Some(*b);
                }
                if let Some(k) = key {
                    self.prompt.key = if k.is_empty() { None } else { Some(k.clone()) };
                }
                if let Some(b) = prompt_b {
                    self.prompt_b = if b.trim().is_empty() {
                        None
                    } else {
                        Some(b.clone())
                    };
                }
                if let Some(n) = negative {
                    self.negative = if n.trim().is_empty() {
                        None
                    } else {
                        Some(n.clone())
                    };
                }
                let result = self
                    .prompt
                    .validate()
                    .map_err(SessionError::from)
                    .and_then(|_| self.rebuild_conds());
                if let Err(e) = result {
                    (self.prompt, self.prompt_b, self.negative) = saved;
                    return Err(e);
                }
            }
            ControlMessage::SetSolver { solver } => self.solver = *solver,
            ControlMessage::SetCfgMode { mode } => self.cfg_mode = *mode,
            ControlMessage::SetDcw { enabled, mode } => {
                if let Some(e) = enabled {
                    self.dcw_enabled = *e;
                }
                if let Some(m) = mode {
                    self.dcw_mode = *m;
                }
            }
            ControlMessage::SetSource { source } => {
                let resolved = self.set_source(source)?;
                return Ok(ControlMessage::SetSource { source: resolved });
            }
            ControlMessage::SetLora { id, strength } => {
                let v = check_knob(&format!("{LORA_PREFIX}{id}"), *strength)?;
                self.set_knob(&format!("{LORA_PREFIX}{id}"), v)?;
            }
            ControlMessage::SetLoopBand { start_s, end_s } => {
                if !(start_s.is_finite() && end_s.is_finite() && *start_s >= 0.0) {
                    return Err(SessionError::bad_value(
                        "loop band",
                        format!("[{start_s}, {end_s}] s is not a range of times"),
                    ));
                }
                let sr = self.buffer.sample_rate as f64;
                let band = LoopBand {
                    start: (start_s * sr).round() as usize,
                    end: (end_s * sr).round() as usize,
                };
                self.buffer.set_band(Some(band))?;
            }
            ControlMessage::ClearLoopBand => self.buffer.set_band(None)?,
            ControlMessage::Seek { seconds } => {
                if !(seconds.is_finite() && *seconds >= 0.0) {
                    return Err(SessionError::bad_value(
                        "seek",
                        format!("{seconds} s is not a time"),
                    ));
                }
                self.buffer
                    .seek((seconds * self.buffer.sample_rate as f64).round() as usize)?;
            }
            ControlMessage::SetPlaying { playing } => self.playing = *playing,
            ControlMessage::SetSlew { per_second } => {
                if !(per_second.is_finite() && (0.0..=1000.0).contains(per_second)) {
                    return Err(SessionError::bad_value(
                        "slew rate",
                        format!("{per_second} is outside [0, 1000] per second"),
                    ));
                }
                self.knobs.slew_per_second = *per_second;
            }
        }
        Ok(msg.clone())
    }

    fn check_lora(&mut self, id: &str) -> SessionResult<()> {
        match self.backend.denoiser.adapters() {
            Some(a) if a.list().iter().any(|x| x.id == id) => Ok(()),
            Some(_) => Err(SessionError::NotFound {
                what: "LoRA adapter".into(),
                name: id.to_string(),
            }),
            None => Err(SessionError::UnsupportedByBackend {
                backend: self.backend.name.clone(),
                what: "LoRA adapters".into(),
            }),
        }
    }

    fn set_knob(&mut self, name: &str, v: f64) -> SessionResult<()> {
        if let Some(id) = name.strip_prefix(LORA_PREFIX) {
            self.check_lora(id)?;
        }
        if name == "depth" {
            self.pipeline.set_depth(v as usize)?;
        }
        self.knobs.set(name, v);
        Ok(())
    }

    fn curve(&self, name: &str, frames: usize) -> Option<Curve> {
        self.curves
            .get(name)
            .and_then(|s| s.to_curve(name, frames).ok())
    }

    /// The shared lane from the effective knobs and drawn curves.
    fn build_lane(&self) -> SharedLane {
        let t = self.window_frames;
        let k = |n: &str| self.knobs.get(n) as f32;
        let pick = |name: &str, scalar: Option<f32>| -> Option<Curve> {
            self.curve(name, t).or_else(|| scalar.map(Curve::constant))
        };
        let mut lane = SharedLane::default();
        lane.curves.velocity_scale = pick("velocity_scale", Some(k("velocity_scale")));
        lane.curves.sde_denoise =
            if self.solver == SolverKind::Sde || self.curves.contains_key("sde_denoise") {
                pick("sde_denoise", Some(k("sde_denoise")))
            } else {
                None
            };
        lane.curves.ode_noise = pick("ode_noise", (k("ode_noise") > 0.0).then(|| k("ode_noise")));
        lane.curves.x0_target_strength = pick(
            "x0_target_strength",
            (k("x0_target_strength") > 0.0).then(|| k("x0_target_strength")),
        );
        lane.curves.guidance = pick("guidance", (k("guidance") > 1.0).then(|| k("guidance")));
        lane.curves.apg_momentum = pick("apg_momentum", Some(k("apg_momentum")));
        lane.curves.cfg_rescale = pick(
            "cfg_rescale",
            (k("cfg_rescale") > 0.0).then(|| k("cfg_rescale")),
        );
        let c = self.backend.denoiser.latent_channels();
        let group = c.div_ceil(8).max(1);
        let gains: Vec<f32> = (0..c)
            .map(|i| k(&format!("ch_g{}", (i / group).min(7))))
            .collect();
        lane.channel_gain = ChannelGain::new(gains).ok().filter(|g| !g.is_identity());
        lane.dcw = DcwSettings {
            enabled: self.dcw_enabled,
            mode: self.dcw_mode,
            scaler: Curve::constant(k("dcw")),
            high_scaler: Curve::constant(k("dcw_high")),
            ..DcwSettings::default()
        };
        lane
    }

    /// The slot request for this tick, from the current controls.
    fn build_request(&mut self) -> SessionResult<SlotRequest> {
        if self.conds.is_none() {
            self.rebuild_conds()?;
        }
        let t = self.window_frames;
        let conds = self
            .conds
            .as_ref()
            .ok_or_else(|| SessionError::backend("conditioning unavailable"))?;
        let timbre = self.knobs.get("timbre") as f32;
        let blend = self.knobs.get("blend") as f32;
        let with_timbre = |plain: &Conditioning,
                           tim: &Option<Conditioning>|
         -> SessionResult<Conditioning> {
            match tim {
                Some(tc) if timbre > 0.001 => Ok(Conditioning::lerp(plain, tc, timbre.min(1.0))?),
                _ => Ok(plain.clone()),
            }
        };
        let ca = with_timbre(&conds.a, &conds.a_timbre)?;
        let negative = conds.negative.clone();
        let blend_curve = self.curve("blend", t);
        let conditions = match (&conds.b, blend_curve) {
            (Some((b, bt)), Some(curve)) => {
                let cb = with_timbre(b, bt)?;
                let w = curve.clamped(0.0, 1.0);
                let wa = w.map("blend", |x| 1.0 - x)?;
                vec![
                    SlotCondition::weighted(ca, wa),
                    SlotCondition::weighted(cb, w),
                ]
            }
            (Some((b, bt)), None) if blend > 0.001 => {
                let cb = with_timbre(b, bt)?;
                vec![SlotCondition::new(Conditioning::lerp(
                    &ca,
                    &cb,
                    blend.min(1.0),
                )?)]
            }
            _ => vec![SlotCondition::new(ca)],
        };
        let src_chunk = match &self.source {
            Some(s) => Some(s.latent.narrow(1, self.chunk_offset, t)?),
            None => None,
        };
        // Structure context, recomputed only when the strength or the source changes.
        let structure = self.knobs.get("structure");
        let key = (structure.to_bits(), self.chunk_offset, self.source_version);
        let context = match &self.context_cache {
            Some((s, o, v, ctx)) if (*s, *o, *v) == key => ctx.clone(),
            _ => {
                let strength = if src_chunk.is_some() {
                    structure as f32
                } else {
                    0.0
                };
                let ctx = self
                    .backend
                    .conditioner
                    .context(src_chunk.as_ref(), t, strength)?;
                self.context_cache = Some((key.0, key.1, key.2, ctx.clone()));
                ctx
            }
        };
        let seed = self.knobs.get("seed") as u64;
        let mut r = SlotRequest::new(conditions[0].conditioning.clone(), context, t, seed);
        r.conditions = conditions;
        r.tag = self.generation_tag();
        r.schedule.steps = self.knobs.get("steps") as usize;
        r.schedule.shift = self.knobs.get("shift") as f32;
        r.solver = self.solver;
        r.cfg_mode = self.cfg_mode;
        r.negatives = vec![SlotCondition::new(negative)];
        // Feedback: earlier outputs mixed into the source (or standing in for a missing one).
        let feedback = self.knobs.get("feedback") as f32;
        let tap = (self.knobs.get("feedback_depth") as usize).clamp(1, 8) - 1;
        let tap_latent = self
            .history
            .get(tap)
            .filter(|h| h.dims() == [1, t, self.backend.denoiser.latent_channels()]);
        let fed = match (feedback > 0.0, tap_latent) {
            (true, Some(h)) => match &src_chunk {
                Some(s) => {
                    Some((s * (1.0 - feedback as f64)).and_then(|a| a + (h * feedback as f64)?)?)
                }
                None => Some(h.clone()),
            },
            _ => src_chunk.clone(),
        };
        r.schedule.denoise = if fed.is_some() {
            self.knobs.get("denoise") as f32
        } else {
            1.0
        };
        r.source = fed;
        r.x0_target = src_chunk.clone();
        if src_chunk.is_some() {
            r.initial_noise_curve = self.curve("initial_noise", t).map(|c| c.clamped(0.0, 1.0));
            r.x0_target_curve = self.curve("x0_target", t).map(|c| c.clamped(0.0, 1.0));
        }
        Ok(r)
    }

    /// Which song (epoch) and chunk a request belongs to: `epoch << 32 | chunk offset`.
    fn generation_tag(&self) -> u64 {
        (self.song_epoch << 32) | self.chunk_offset as u64
    }

    /// Run one tick. `clock` overrides the decode lead (replays use the recorded one).
    pub fn tick(&mut self, lead_override: Option<u32>) -> SessionResult<TickOutput> {
        let started = Instant::now();
        let dt = self.cfg.samples_per_tick as f64 / self.buffer.sample_rate as f64;
        let knobs_changed = self.knobs.advance(dt);

        // LoRA strengths (global weights) go to the model between ticks.
        let wanted: Vec<(String, f64)> = self
            .knobs
            .effective
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(LORA_PREFIX).map(|id| (id.to_string(), *v)))
            .collect();
        for (id, v) in wanted {
            if self.loras.get(&id) != Some(&v) {
                if let Some(a) = self.backend.denoiser.adapters() {
                    a.set_strength(&id, v as f32)
                        .map_err(|e| SessionError::engine(&format!("LoRA `{id}`"), e))?;
                }
                self.loras.insert(id, v);
            }
        }
        let lane = self.build_lane();
        if lane != self.lane {
            self.pipeline.set_lane(lane.clone())?;
            self.lane = lane;
        }

        // Sliding window: follow the decode target into the chunk that contains it.
        let hop = self.hop;
        let playhead = self.buffer.playhead();
        let (region_lo, region_hi) = self.buffer.region();
        let region = (
            region_lo / hop,
            region_hi.div_ceil(hop).min(self.song_frames),
        );
        let lead = lead_override.unwrap_or(self.lead_frames);
        let span = (region.1 - region.0).max(1);
        let target = region.0 + ((playhead / hop).saturating_sub(region.0) + lead as usize) % span;
        if self.window_frames < self.song_frames {
            let w = self.window_frames;
            if target < self.chunk_offset || target >= self.chunk_offset + w {
                self.chunk_offset = (target / w * w).min(self.song_frames - w);
                self.history.clear();
                self.latest = None;
                self.context_cache = None;
            }
        }

        if self.playing || self.latest.is_none() {
            let request = self.build_request()?;
            self.pipeline.submit(request)?;
        }
        let report = self.pipeline.tick(self.backend.denoiser.as_mut())?;
        let mut finished = 0;
        for f in report.finished {
            self.generations += 1;
            if f.tag != self.generation_tag() {
                continue; // generated for another song length or a chunk the window has left
            }
            finished += 1;
            self.history.push_front(f.latent.clone());
            self.history.truncate(8);
            self.latest = Some(f.latent);
            self.version += 1;
        }
        let tick_ms = started.elapsed().as_secs_f32() * 1000.0;

        // Windowed decode at the target.
        let decode_started = Instant::now();
        let mut patches = Vec::new();
        let mut replaced = false;
        if let Some(latent) = self.latest.clone() {
            if !self.buffer_filled
                && self.source.is_none()
                && self.window_frames == self.song_frames
            {
                let audio = self.backend.codec.decode(&latent, 0)?;
                let mut ch = audio.channels.into_iter();
                let l = ch.next().unwrap_or_default();
                let r = ch.next().unwrap_or_else(|| l.clone());
                self.buffer.replace([l, r]);
                self.decoder.mark_all(self.version);
                replaced = true;
            } else {
                let chunk = (self.chunk_offset, self.window_frames);
                if let Some(w) = self.decoder.update_chunk(
                    self.backend.codec.as_mut(),
                    &latent,
                    chunk,
                    self.version,
                    target,
                    region,
                    &mut self.buffer,
                )? {
                    // Clients get exactly what the loop holds now (the crossfaded patch), so
                    // their copy matches the server's, edges included.
                    let start = w.start_frame * hop;
                    let n = w.frames * hop;
                    patches.push((start as u64, Arc::new(self.buffer.copy_range(start, n))));
                }
            }
            self.buffer_filled = true;
        }
        let decode_ms = decode_started.elapsed().as_secs_f32() * 1000.0;
        if self.cfg.adaptive_lead {
            let cost = (tick_ms + decode_ms) as f64;
            self.cost_ema_ms = if self.cost_ema_ms == 0.0 {
                cost
            } else {
                0.7 * self.cost_ema_ms + 0.3 * cost
            };
            let base = (self.cfg.lead_seconds * 25.0).round() as u32;
            self.lead_frames = base.max((self.cost_ema_ms / 40.0).ceil() as u32 + 1);
        }

        let mut played = [Vec::new(), Vec::new()];
        if self.playing {
            self.buffer.read(self.cfg.samples_per_tick, &mut played);
        }
        let out = TickOutput {
            tick: self.tick,
            played,
            patches,
            replaced,
            finished,
            tick_ms,
            decode_ms,
            playhead: playhead as u64,
            lead_frames: lead,
            active_slots: report.active_slots,
            queue: self.pipeline.queue_len(),
            knobs_changed,
        };
        self.last_tick_ms = tick_ms;
        self.last_decode_ms = decode_ms;
        self.tick += 1;
        self.probe.tick.store(self.tick, Ordering::Release);
        Ok(out)
    }

    /// Full decode of the newest finished latent (for checks and tools; not on the hot path).
    pub fn latest_audio(&mut self) -> Option<demon_engine::Audio> {
        let latent = self.latest.clone()?;
        self.backend.codec.decode(&latent, 0).ok()
    }

    /// A snapshot for status endpoints and UIs.
    pub fn state(&mut self) -> SessionState {
        let sr = self.buffer.sample_rate as f64;
        let adapters = self
            .backend
            .denoiser
            .adapters()
            .map(|a| a.list())
            .unwrap_or_default();
        SessionState {
            backend: self.backend.name.clone(),
            tick: self.tick,
            knobs: self.knobs.effective.clone(),
            targets: self.knobs.target.clone(),
            curves: self.curves.clone(),
            prompt: self.prompt.tags.clone(),
            prompt_b: self.prompt_b.clone(),
            negative: self.negative.clone(),
            bpm: self.prompt.bpm,
            key: self.prompt.key.clone(),
            solver: self.solver,
            cfg_mode: self.cfg_mode,
            dcw_enabled: self.dcw_enabled,
            dcw_mode: self.dcw_mode,
            source: self.source.as_ref().map(|s| s.name.clone()),
            song_seconds: self.song_frames as f64 / 25.0,
            window_seconds: self.window_frames as f64 / 25.0,
            chunk_offset_seconds: self.chunk_offset as f64 / 25.0,
            playhead_seconds: self.buffer.playhead() as f64 / sr,
            loop_band: self
                .buffer
                .band()
                .map(|b| (b.start as f64 / sr, b.end as f64 / sr)),
            playing: self.playing,
            depth: self.pipeline.depth(),
            active_slots: self.pipeline.active_slots(),
            queue: self.pipeline.queue_len(),
            generations: self.generations,
            tick_ms: self.last_tick_ms,
            decode_ms: self.last_decode_ms,
            lead_ms: self.lead_frames as f32 * 40.0,
            slew_per_second: self.knobs.slew_per_second,
            receptive_field: self.decoder.field,
            adapters,
        }
    }
}

fn check_curve_range(name: &str, c: &Curve) -> SessionResult<()> {
    let (lo, hi) = match name {
        n if STEP_CURVE_NAMES.contains(&n) => {
            let mut probe = demon_engine::StepCurves::default();
            *probe.field_mut(n)? = Some(c.clone());
            return Ok(probe.validate()?);
        }
        _ => (0.0, 1.0),
    };
    Ok(c.check_range(name, lo, hi)?)
}

/// What a status endpoint shows (and the `state` of the WebSocket protocol, which clients and
/// the protocol tests read back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub backend: String,
    pub tick: u64,
    pub knobs: BTreeMap<String, f64>,
    pub targets: BTreeMap<String, f64>,
    pub curves: BTreeMap<String, CurveSpec>,
    pub prompt: String,
    pub prompt_b: Option<String>,
    pub negative: Option<String>,
    pub bpm: Option<f32>,
    pub key: Option<String>,
    pub solver: SolverKind,
    pub cfg_mode: CfgMode,
    pub dcw_enabled: bool,
    pub dcw_mode: DcwMode,
    pub source: Option<String>,
    pub song_seconds: f64,
    pub window_seconds: f64,
    pub chunk_offset_seconds: f64,
    pub playhead_seconds: f64,
    pub loop_band: Option<(f64, f64)>,
    pub playing: bool,
    pub depth: usize,
    pub active_slots: usize,
    pub queue: usize,
    pub generations: u64,
    pub tick_ms: f32,
    pub decode_ms: f32,
    pub lead_ms: f32,
    pub slew_per_second: f64,
    pub receptive_field: ReceptiveField,
    pub adapters: Vec<demon_engine::AdapterInfo>,
}

/// Knob names in the catalog (for UIs and agents).
pub fn knob_names() -> Vec<&'static str> {
    crate::control::KNOBS.iter().map(|k| k.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for n in 0..10 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37) as u8).collect();
            assert_eq!(b64_decode(&b64_encode(&bytes)).unwrap(), bytes);
        }
        assert!(b64_decode("abc").is_err());
        assert!(b64_decode("ab!d").is_err());
    }
}
