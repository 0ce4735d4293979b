//! `LiveCore`: one live session's state and its deterministic tick, without threads.
//!
//! The runner thread (`session`) and the offline replayer both drive this same core, which is why
//! a replay is exact: a tick's output is a function of the configuration, the control events
//! applied before it and the clock (playhead, decode lead) it ran with, nothing else.
//!
//! The core is in rooms, one per job:
//! - [`apply`](self::apply): control messages — control values go to [`Controls`] (validated
//!   there, once), sources, the loop band, seek and play to the session;
//! - [`sources`]: a `SourceSpec` (audio or a latent) decoded into the source latent;
//! - [`decoding`]: which window of the loop to decode this tick, the decode itself, and the
//!   decode lead;
//! - this file: construction, the tick and the status snapshot.
//!
//! A tick reads as lane → submit → model tick → harvest → decode → patch → play. Requests and
//! the lane come from the one builder ([`crate::requests`]), the same one offline renders use.
//! Every stateful part resets through its own `reset_state` ([`StreamingState`], as kyutai
//! moshi's `StreamingModule`), so a song-length change, a source change and a window move each
//! forget exactly what they must.

mod apply;
mod decoding;
// Public for the session's preparing thread; the core itself never imports it (its
// `impl LiveCore` uses the core, so a re-export here would be a module cycle).
pub mod sources;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use candle_core::Tensor;
use demon_engine::{
    BackendSet, CfgMode, CurveSpec, DcwMode, ReceptiveField, SharedLane, SolverKind,
    StreamPipeline, measure_receptive_field, probe_latents,
};
use serde::{Deserialize, Serialize};

use crate::budget::{RealtimeBudget, RealtimeReport};
use crate::control::{ControlMessage, SourceSpec};
use crate::controls::Controls;
use crate::decode::WindowedDecoder;
use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;
use crate::latency::{ClassLatency, EarClass, KnobToEar, ReflectTracker, Reflected};
use crate::lead::LeadController;
use crate::loopbuf::LoopBuffer;
use crate::lora_library::{LibraryIndex, LibraryStatus, RescanReport};
use crate::loudness::LoudnessTracker;
use crate::requests::{self, Conds, Inputs};

/// A latent as a `SourceSpec::Latent` (for recordings and the wire).
pub fn latent_spec(name: &str, latent: &Tensor) -> SessionResult<SourceSpec> {
    let (_, frames, channels) = latent.dims3()?;
    let v: Vec<f32> = latent.flatten_all().and_then(|t| t.to_vec1())?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(SourceSpec::Latent {
        name: name.into(),
        frames,
        channels,
        data_b64: BASE64.encode(bytes),
    })
}

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
    /// How far ahead of the playhead windows are decoded (where the adaptive lead starts).
    pub lead_seconds: f64,
    /// Adapt the lead to what ticks, decode, delivery and the clients' playheads need
    /// (`crate::lead`); off: `lead_seconds` always.
    pub adaptive_lead: bool,
    /// Initial knob values (the catalog's defaults otherwise).
    pub knobs: BTreeMap<String, f64>,
    pub solver: SolverKind,
    pub cfg_mode: CfgMode,
    pub slew_per_second: f64,
    pub playing: bool,
    /// Receptive field of the codec; measured at start when absent.
    pub receptive_field: Option<ReceptiveField>,
    /// DEMON's idle pause: after this many seconds of the session clock without a control
    /// (or a moving automation lane), no new generations start and the loop keeps playing
    /// what it holds; one song length later the windowed decode stops too. The next control
    /// resumes both. Counted in ticks, so a replay pauses where the session did. `None`: never.
    pub idle_pause_seconds: Option<f64>,
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
            idle_pause_seconds: None,
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

/// The longest idle pause a session takes ([`SessionConfig::idle_pause_seconds`]): a day.
pub const MAX_IDLE_PAUSE_SECONDS: f64 = 86_400.0;

/// The adaptive lead never goes below this many frames (`crate::lead`).
pub const LEAD_FLOOR_FRAMES: u32 = 2;
/// Nor above this (or the configured lead, when that is longer).
pub const LEAD_CEILING_SECONDS: f64 = 3.0;
/// A client's arrival report of a slice older than this many ticks is not a live one.
pub const ARRIVAL_MAX_AGE_TICKS: u64 = 8;

/// A window patched into the loop: its start sample and the planar audio the loop holds there.
pub type Patch = (u64, Arc<Vec<Vec<f32>>>);

/// What one tick produced. The audio it played is [`LiveCore::played`].
pub struct TickOutput {
    pub tick: u64,
    /// Samples played this tick (0 when stopped).
    pub played_samples: usize,
    /// Windows patched into the loop: (start sample, planar audio).
    pub patches: Vec<Patch>,
    /// The whole loop was replaced (first generation, new source, new song length): clients
    /// need the whole loop, not patches.
    pub replaced: bool,
    pub finished: usize,
    pub tick_ms: f32,
    pub decode_ms: f32,
    pub playhead: u64,
    pub lead_frames: u32,
    pub active_slots: usize,
    pub queue: usize,
    pub knobs_changed: bool,
    /// The depth cap this tick ran under (what a session file's clock line records).
    pub depth_cap: Option<usize>,
    /// The budget after this tick; its `depth_cap` is the one the next tick runs under.
    pub realtime: RealtimeReport,
    /// Controls whose first carrying slice this tick decoded (`crate::latency`).
    pub reflected: Vec<Reflected>,
}

/// The idle pause's stages ([`SessionConfig::idle_pause_seconds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idle {
    /// Generating as usual.
    No,
    /// No new generations; the windowed decode still sweeps the loop with the last latent.
    NotGenerating,
    /// The loop holds the last latent everywhere: decoding stops too.
    NotDecoding,
}

/// A part of the core that carries state from tick to tick. `reset_state` forgets it; every
/// path that must forget (a new song length, a new source, the window moving) goes through it.
pub trait StreamingState {
    fn reset_state(&mut self);
}

/// Where the generation window sits in the song.
#[derive(Clone, Copy, Debug)]
struct Song {
    /// Latent frames of the whole song (the loop).
    frames: usize,
    /// Frames generated per request: the song, or the sliding window of a long one.
    window: usize,
    /// First song frame of the window.
    chunk_offset: usize,
    /// Bumped when the song's length changes: generations started before are not this song's
    /// and are dropped when they finish.
    epoch: u64,
}

// The controls' constructor from a session's configuration lives with the configuration: the
// controls module must not import the core that drives it.
impl Controls {
    /// The controls a session starts with: the configuration's prompts, solver, CFG mode,
    /// slew and knobs, curves evaluated at `frames`.
    pub fn from_config(
        cfg: &SessionConfig,
        frames: usize,
        facts: &BackendFacts,
    ) -> SessionResult<Self> {
        let mut controls = Controls::new(
            demon_engine::Prompt {
                tags: cfg.prompt.clone(),
                bpm: cfg.bpm,
                key: cfg.key.clone(),
                ..Default::default()
            },
            frames,
        );
        controls.prompts.b = cfg.prompt_b.clone();
        controls.prompts.negative = cfg.negative.clone();
        controls.prompts.validate()?;
        controls.solver = cfg.solver;
        controls.cfg_mode = cfg.cfg_mode;
        controls.set_slew(cfg.slew_per_second)?;
        for (k, v) in &cfg.knobs {
            controls.init_knob(k, *v, facts)?;
        }
        Ok(controls)
    }
}

impl Song {
    /// Which song (epoch) and chunk a request belongs to: `epoch << 32 | chunk offset`.
    fn tag(&self) -> u64 {
        (self.epoch << 32) | self.chunk_offset as u64
    }
}

/// What the ring has produced for the current window: the newest latents (feedback taps them)
/// and a version that tells the decoder which frames are stale.
#[derive(Default)]
struct Harvest {
    history: VecDeque<Tensor>,
    latest: Option<Tensor>,
    /// Bumped per finished latent of this window; never reset, so frames decoded from an
    /// earlier window never pass for current.
    version: u64,
    /// Finished generations of any window or song, for throughput figures.
    generations: u64,
}

impl StreamingState for Harvest {
    fn reset_state(&mut self) {
        self.history.clear();
        self.latest = None;
    }
}

/// The structural context of the window, recomputed only when its key changes.
#[derive(Default)]
struct ContextCache {
    /// (structure strength bits, chunk offset, source version) and the context.
    entry: Option<((u64, usize, u64), Tensor)>,
}

impl StreamingState for ContextCache {
    fn reset_state(&mut self) {
        self.entry = None;
    }
}

/// The loop the listener hears and how it is kept fresh.
struct Playback {
    decoder: WindowedDecoder,
    buffer: LoopBuffer,
    /// The whole loop has been written once (by the source or the first generation).
    filled: bool,
    /// The loop was replaced between ticks (a new song length, a source's own audio): the next
    /// tick reports it as `replaced`, so every client gets the whole new loop.
    replaced_between_ticks: bool,
    /// How far ahead of the playhead windows are decoded, in latent frames.
    lead_frames: u32,
    playing: bool,
    samples_per_tick: usize,
    /// The block played by the last tick; its capacity is `samples_per_tick`, reserved once.
    played: [Vec<f32>; 2],
}

/// One live session's state.
pub struct LiveCore {
    cfg: SessionConfig,
    facts: BackendFacts,
    backend: BackendSet,
    pipeline: StreamPipeline,
    controls: Controls,
    conds: Conds,
    song: Song,
    harvest: Harvest,
    context: ContextCache,
    playback: Playback,
    /// LoRA strengths as the model has them (global weights go to the model between ticks).
    applied_loras: requests::AppliedAdapters,
    /// The LoRA library's adapters, registered and loaded (`crate::lora_library`).
    library: LibraryIndex,
    /// The lane the pipeline holds (`None` until the first tick sets one).
    lane: Option<SharedLane>,
    tick: u64,
    /// The tick the last control was applied before (or a lane moved a knob): the idle
    /// pause counts from it.
    last_activity_tick: u64,
    pub probe: Arc<SessionProbe>,
    last_tick_ms: f32,
    last_decode_ms: f32,
    /// Tick cost against the tick's share of real time (always measured).
    budget: RealtimeBudget,
    /// Let the budget lower the depth while ticks overrun (live sessions paced to the clock).
    degrade: bool,
    /// The ring depth the degrade policy (or a replayed clock line) allows; `None`: the
    /// performer's depth runs.
    depth_cap: Option<usize>,
    /// The adaptive lead (used when `cfg.adaptive_lead`).
    lead: LeadController,
    /// Which slice first carries each applied control, and the measured knob-to-ear figures.
    reflects: ReflectTracker,
    ear: KnobToEar,
    /// The loudness meter of what plays and the matcher's gain.
    loudness: LoudnessTracker,
}

impl LiveCore {
    /// Build a session; measures the codec's receptive field unless the config gives it.
    pub fn new(cfg: SessionConfig, mut backend: BackendSet) -> SessionResult<Self> {
        backend
            .validate()
            .map_err(|e| SessionError::engine("backend", e))?;
        let facts = BackendFacts::of(&mut backend);
        let loudness = LoudnessTracker::new(facts.sample_rate);
        if cfg.samples_per_tick == 0 || cfg.samples_per_tick > 48_000 {
            return Err(SessionError::bad_value(
                "samples_per_tick",
                format!("{} is outside 1..=48000", cfg.samples_per_tick),
            ));
        }
        if let Some(s) = cfg.idle_pause_seconds
            && !(s.is_finite() && s > 0.0 && s <= MAX_IDLE_PAUSE_SECONDS)
        {
            return Err(SessionError::bad_value(
                "idle pause",
                format!("{s} s is outside (0, {MAX_IDLE_PAUSE_SECONDS}]"),
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
        let field = match cfg.receptive_field {
            Some(f) => f,
            None => {
                let probes = probe_latents(100, facts.latent_channels, backend.codec.device())?;
                measure_receptive_field(backend.codec.as_mut(), &probes, 9, 3, 32, 1e-6)?
            }
        };
        let song_frames = facts.frames(cfg.song_seconds);
        let controls = Controls::from_config(&cfg, song_frames, &facts)?;
        let pipeline = StreamPipeline::for_denoiser(controls.depth(), backend.denoiser.as_ref())?;
        let conds = Conds::prepare(
            backend.conditioner.as_mut(),
            &controls.conditioning_prompts(),
            None,
        )?;
        let keep = facts.frames(cfg.keep_seconds).max(1);
        let start_lead = facts.frames(cfg.lead_seconds) as u32;
        let lead = LeadController::new(
            start_lead,
            LEAD_FLOOR_FRAMES,
            start_lead.max(facts.frames(LEAD_CEILING_SECONDS) as u32),
            facts.frames_ms(1),
        );
        let playback = Playback::new(
            WindowedDecoder::new(field, keep, facts.hop_samples, song_frames),
            LoopBuffer::new(facts.sample_rate, song_frames * facts.hop_samples),
            start_lead,
            cfg.samples_per_tick,
            cfg.playing,
        );
        // A tick may take as long as the audio it makes plays.
        let tick_budget_ms =
            (cfg.samples_per_tick as f64 * 1000.0 / facts.sample_rate as f64) as f32;
        let mut core = Self {
            song: Song {
                frames: song_frames,
                window: song_frames,
                chunk_offset: 0,
                epoch: 0,
            },
            cfg,
            facts,
            backend,
            pipeline,
            controls,
            conds,
            harvest: Harvest::default(),
            context: ContextCache::default(),
            playback,
            applied_loras: BTreeMap::new(),
            library: LibraryIndex::default(),
            lane: None,
            tick: 0,
            probe: Arc::new(SessionProbe::default()),
            last_activity_tick: 0,
            last_tick_ms: 0.0,
            last_decode_ms: 0.0,
            budget: RealtimeBudget::new(tick_budget_ms),
            degrade: false,
            depth_cap: None,
            lead,
            reflects: ReflectTracker::default(),
            ear: KnobToEar::default(),
            loudness,
        };
        core.cfg.receptive_field = Some(field);
        let source = core.cfg.source.clone();
        if source != SourceSpec::None {
            // Recordings keep the resolved latent, never the file or audio it came from.
            core.cfg.source = core.set_source(&source)?;
        } else {
            core.resize_song(song_frames)?;
        }
        // Clients connecting take the starting loop whole; only later replacements are news.
        core.playback.replaced_between_ticks = false;
        Ok(core)
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn backend(&mut self) -> &mut BackendSet {
        &mut self.backend
    }

    /// What the runtime knows about the backend.
    pub fn facts(&self) -> &BackendFacts {
        &self.facts
    }

    /// How the backend reads adapter files, when it can add adapters at run time.
    pub fn adapter_files(&mut self) -> Option<Arc<dyn demon_engine::AdapterFiles>> {
        self.backend.denoiser.adapters().and_then(|a| a.files())
    }

    /// The LoRA library as the session knows it.
    pub fn library(&self) -> &LibraryIndex {
        &self.library
    }

    /// Take in a scan of the library (`LoraLibrary::scan`, run off this thread). Ids already
    /// used by adapters the model had before the library are not given to library entries.
    pub fn merge_library(&mut self, scan: crate::lora_library::Scan) -> RescanReport {
        let library_ids: Vec<&str> = self
            .library
            .entries()
            .iter()
            .map(|e| e.id.as_str())
            .collect();
        let taken: Vec<String> = self
            .facts
            .adapters
            .iter()
            .flatten()
            .filter(|id| !library_ids.contains(&id.as_str()))
            .cloned()
            .collect();
        self.library.merge(scan, &taken)
    }

    /// The library adapters `msg` needs that are not in the model yet (a control naming one
    /// waits for its load; `session`).
    pub fn adapters_to_load(&self, msg: &ControlMessage) -> Vec<String> {
        let mut ids: Vec<String> = msg
            .adapter_ids()
            .into_iter()
            .filter(|id| {
                self.library
                    .get(id)
                    .is_some_and(|e| e.status != LibraryStatus::Loaded)
            })
            .map(str::to_string)
            .collect();
        ids.dedup();
        ids
    }

    /// Mark a library adapter as being loaded, or as failed.
    pub fn set_library_status(&mut self, id: &str, status: LibraryStatus) {
        self.library.set_status(id, status);
    }

    /// Put adapter `id`, read from `path` (by `AdapterFiles::load`, here or beside the ticks),
    /// into the model, disabled. Returns the control as recorded.
    pub fn install_adapter(
        &mut self,
        id: &str,
        path: &std::path::Path,
        metadata: demon_engine::AdapterMetadata,
        loaded: demon_engine::LoadedAdapter,
    ) -> SessionResult<ControlMessage> {
        let adapters =
            self.backend
                .denoiser
                .adapters()
                .ok_or_else(|| SessionError::UnsupportedByBackend {
                    backend: self.facts.name.clone(),
                    what: "LoRA adapters".into(),
                })?;
        adapters
            .install(id, metadata.clone(), loaded)
            .map_err(|e| SessionError::bad_value(format!("LoRA `{id}`"), e.to_string()))?;
        self.facts.refresh_adapters(&mut self.backend);
        self.library.set_status(id, LibraryStatus::Loaded);
        self.probe.control_version.fetch_add(1, Ordering::AcqRel);
        self.last_activity_tick = self.tick;
        Ok(ControlMessage::InstallLora {
            id: id.to_string(),
            path: path.to_string_lossy().into_owned(),
            metadata,
        })
    }

    /// The performer's controls as the session holds them.
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    pub fn pipeline(&self) -> &StreamPipeline {
        &self.pipeline
    }

    pub fn buffer(&self) -> &LoopBuffer {
        &self.playback.buffer
    }

    pub fn tick_index(&self) -> u64 {
        self.tick
    }

    pub fn receptive_field(&self) -> ReceptiveField {
        self.playback.decoder.field
    }

    pub fn song_frames(&self) -> usize {
        self.song.frames
    }

    pub fn sample_rate(&self) -> u32 {
        self.facts.sample_rate
    }

    pub fn generations(&self) -> u64 {
        self.harvest.generations
    }

    /// The loudness of what plays and the matcher's gain.
    pub fn loudness(&self) -> crate::loudness::LoudnessReport {
        self.loudness.report()
    }

    /// The block of audio the last tick played (planar stereo; empty when stopped; with the
    /// matcher's gain). Its buffers are allocated once, so playing never allocates.
    pub fn played(&self) -> &[Vec<f32>; 2] {
        &self.playback.played
    }

    /// Start the knob-to-ear accounting of an applied control `id` received at `received`
    /// (transport controls are not counted). Call after [`apply`](Self::apply) succeeded.
    pub fn track_control(&mut self, id: u64, msg: &ControlMessage, received: Instant) {
        if let Some(class) = EarClass::of(msg) {
            self.reflects.track(id, class, self.pipeline.ticks());
            self.ear.received(id, class, received);
        }
    }

    /// A client first played a sample reflecting control `id` at `played` (server clock):
    /// the class and the latency in ms, once per control.
    pub fn heard(&mut self, id: u64, played: Instant) -> Option<(EarClass, f64)> {
        self.ear.heard(id, played)
    }

    /// A client's report: the slice of `tick` arrived with its playhead at `client_sample`
    /// (feeds the adaptive lead). Returns the need in ms of playhead travel.
    pub fn observe_arrival(&mut self, tick: u64, client_sample: u64) -> Option<f64> {
        // A slice older than this arrived with a catch-up (a page that just connected or
        // resynced), not live: what the page's playhead says of it is no need.
        if tick + ARRIVAL_MAX_AGE_TICKS < self.tick {
            return None;
        }
        let (lo, hi) = self.playback.buffer.region();
        let span = (hi - lo) as u64;
        let need = self
            .lead
            .observe_arrival(tick, client_sample, span, self.facts.sample_rate)?;
        if self.cfg.adaptive_lead && self.playback.playing {
            self.playback.lead_frames = self.lead.grow();
        }
        Some(need)
    }

    /// The knob-to-ear figures per class (what `state().knob_to_ear` holds).
    pub fn knob_to_ear(&self) -> BTreeMap<String, ClassLatency> {
        self.ear.report()
    }

    /// The lead in force, in latent frames.
    pub fn lead_frames(&self) -> u32 {
        self.playback.lead_frames
    }

    /// Let the real-time budget lower the depth while ticks overrun (`RealtimeBudget`); live
    /// sessions paced to the wall clock turn this on, offline runs and replays do not.
    pub fn set_degrade(&mut self, on: bool) {
        self.degrade = on;
    }

    pub fn depth_cap(&self) -> Option<usize> {
        self.depth_cap
    }

    /// Cap the ring depth (`None`: the `depth` knob alone decides). The degrade policy sets it;
    /// replays set what the recording's clock lines say.
    pub fn set_depth_cap(&mut self, cap: Option<usize>) -> SessionResult<()> {
        let depth = self.controls.depth();
        self.pipeline
            .set_depth(cap.map_or(depth, |c| c.min(depth)))?;
        self.depth_cap = cap;
        Ok(())
    }

    /// The generation window of a song of `frames`: the song, or the sliding window of a long
    /// one.
    fn window_for(&self, frames: usize) -> usize {
        let max_window = self.facts.frames(self.cfg.window_seconds);
        if max_window > 0 && frames > max_window {
            max_window
        } else {
            frames
        }
    }

    /// A new song length: everything that belongs to the old song is forgotten.
    fn resize_song(&mut self, frames: usize) -> SessionResult<()> {
        let window = self.window_for(frames);
        self.controls.set_frames(window)?;
        self.song = Song {
            frames,
            window,
            chunk_offset: 0,
            epoch: self.song.epoch + 1,
        };
        self.playback.resize(frames, self.facts.hop_samples);
        self.harvest.reset_state();
        self.context.reset_state();
        Ok(())
    }

    /// The window follows the decode target into the chunk that contains it; moving forgets
    /// what the ring made for the old chunk.
    fn follow_window(&mut self, target: usize) {
        let w = self.song.window;
        if w < self.song.frames
            && (target < self.song.chunk_offset || target >= self.song.chunk_offset + w)
        {
            self.song.chunk_offset = (target / w * w).min(self.song.frames - w);
            self.harvest.reset_state();
            self.context.reset_state();
        }
    }

    /// The window's structural context, from the cache when its key has not changed.
    fn context(&mut self) -> SessionResult<Tensor> {
        let key = (
            self.controls.knobs().structure.to_bits(),
            self.song.chunk_offset,
            self.controls.source_version(),
        );
        if let Some((k, ctx)) = &self.context.entry
            && *k == key
        {
            return Ok(ctx.clone());
        }
        let ctx = requests::structure_context(
            self.backend.conditioner.as_mut(),
            &self.controls,
            self.song.chunk_offset,
            self.song.window,
        )?;
        self.context.entry = Some((key, ctx.clone()));
        Ok(ctx)
    }

    /// Automated knobs take their lanes' values at the playhead (`crate::automation`); a LoRA
    /// lane crossing zero with trigger words changes the prompts, which are conditioned again.
    /// Returns whether a knob's target moved.
    fn follow_lanes(&mut self) -> SessionResult<bool> {
        let at_s = self.playback.buffer.playhead() as f64 / self.facts.sample_rate as f64;
        let moves = self.controls.follow_lanes(at_s, &self.facts)?;
        if moves.prompts {
            self.conds = Conds::prepare(
                self.backend.conditioner.as_mut(),
                &self.controls.conditioning_prompts(),
                self.controls.timbre_latent(),
            )?;
        }
        Ok(moves.targets)
    }

    /// The request and lane for this tick, from the one builder.
    fn build(&mut self) -> SessionResult<(demon_engine::SlotRequest, SharedLane)> {
        let context = self.context()?;
        requests::build(
            &self.controls,
            &self.facts,
            self.song.window,
            &Inputs {
                conds: &self.conds,
                context: &context,
                history: &self.harvest.history,
                chunk_offset: self.song.chunk_offset,
                tag: self.song.tag(),
                take: 0,
            },
        )
    }

    /// The request this tick would submit and the lane it would set (for checks and tests;
    /// changes nothing but caches).
    pub fn next_request(&mut self) -> SessionResult<(demon_engine::SlotRequest, SharedLane)> {
        self.build()
    }

    /// Run one tick. `lead_override` replaces the decode lead (replays use the recorded one).
    pub fn tick(&mut self, lead_override: Option<u32>) -> SessionResult<TickOutput> {
        let started = Instant::now();
        let depth_cap = self.depth_cap;
        let dt = self.cfg.samples_per_tick as f64 / self.facts.sample_rate as f64;
        let lanes_moved = self.follow_lanes()?;
        if lanes_moved {
            self.last_activity_tick = self.tick;
        }
        let idle = self.idle();
        let knobs_changed = self.controls.advance(dt) || lanes_moved;
        requests::push_adapters(
            &self.controls,
            self.backend.denoiser.as_mut(),
            &mut self.applied_loras,
            self.tick,
        )?;
        let lead = lead_override.unwrap_or(self.playback.lead_frames);
        let playhead = self.playback.buffer.playhead();
        self.lead.record_playhead(self.tick, playhead as u64);
        let (target, region) =
            self.playback
                .decode_target(lead, self.song.frames, self.facts.hop_samples);
        self.follow_window(target);

        // Lane and request from the controls; the lane is swapped only when it changed.
        let submit = (self.playback.playing && idle == Idle::No) || self.harvest.latest.is_none();
        let (request, lane) = if submit {
            let (r, l) = self.build()?;
            (Some(r), l)
        } else {
            (None, requests::build_lane(&self.controls, &self.facts)?)
        };
        if self.lane.as_ref() != Some(&lane) {
            self.pipeline.set_lane(lane.clone())?;
            self.lane = Some(lane);
        }
        if let Some(r) = request {
            self.pipeline.submit(r)?;
        }
        let report = self.pipeline.tick(self.backend.denoiser.as_mut())?;
        let finished = self.harvest_finished(report.finished);
        let tick_ms = started.elapsed().as_secs_f32() * 1000.0;

        let decode_started = Instant::now();
        // Idle long enough, every window of the loop holds the last latent already.
        let (patches, decoded_whole) = if idle == Idle::NotDecoding && report.active_slots == 0 {
            (Vec::new(), false)
        } else {
            self.decode(target, region)?
        };
        let replaced = decoded_whole || std::mem::take(&mut self.playback.replaced_between_ticks);
        let decode_ms = decode_started.elapsed().as_secs_f32() * 1000.0;
        let mut reflected = Vec::new();
        if decoded_whole {
            let n = self.playback.buffer.len() as u64;
            self.reflects
                .patched(self.harvest.version, self.tick, 0, n, &mut reflected);
        }
        for (start, audio) in &patches {
            let n = audio.first().map_or(0, Vec::len) as u64;
            self.reflects
                .patched(self.harvest.version, self.tick, *start, n, &mut reflected);
        }
        // Stopped, the lead holds: a moving decode target would keep patching a still loop.
        if self.cfg.adaptive_lead && lead_override.is_none() && self.playback.playing {
            // With no client reporting, a slice needs at least its tick and decode.
            self.lead.observe_need((tick_ms + decode_ms) as f64);
            self.playback.lead_frames = self.lead.update();
        }

        let played_samples = self.playback.play();
        // The matcher aims at the source's loudness, else at the `target_lufs` knob.
        let k = self.controls.knobs();
        let target = self
            .controls
            .source_analysis()
            .and_then(|a| a.integrated_lufs)
            .unwrap_or(k.target_lufs);
        self.loudness.process(
            &mut self.playback.played,
            self.cfg.samples_per_tick as f64 / self.facts.sample_rate as f64,
            k.loudness_match >= 0.5,
            target,
        );
        let step = self.budget.observe(
            tick_ms,
            decode_ms,
            report.active_slots,
            self.controls.depth(),
            self.depth_cap,
            self.degrade,
        );
        if let Some(cap) = step {
            self.set_depth_cap(cap)?;
        }
        let out = TickOutput {
            tick: self.tick,
            played_samples,
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
            depth_cap,
            realtime: self.budget.report(self.depth_cap),
            reflected,
        };
        self.last_tick_ms = tick_ms;
        self.last_decode_ms = decode_ms;
        self.tick += 1;
        self.probe.tick.store(self.tick, Ordering::Release);
        Ok(out)
    }

    /// Whether the idle pause holds generation now (`SessionConfig::idle_pause_seconds`).
    pub fn is_idle(&self) -> bool {
        self.idle() != Idle::No
    }

    /// Where the idle pause stands at this tick (`SessionConfig::idle_pause_seconds`).
    fn idle(&self) -> Idle {
        let Some(seconds) = self.cfg.idle_pause_seconds else {
            return Idle::No;
        };
        let ticks_per_second = self.facts.sample_rate as f64 / self.cfg.samples_per_tick as f64;
        let pause = (seconds * ticks_per_second).ceil() as u64;
        let song =
            (self.playback.buffer.len() as f64 / self.cfg.samples_per_tick as f64).ceil() as u64;
        let quiet = self.tick.saturating_sub(self.last_activity_tick);
        if quiet < pause {
            Idle::No
        } else if quiet < pause.saturating_add(song) {
            Idle::NotGenerating
        } else {
            Idle::NotDecoding
        }
    }

    /// Keep the finished latents that belong to this song and window.
    fn harvest_finished(&mut self, finished: Vec<demon_engine::Finished>) -> usize {
        let mut n = 0;
        for f in finished {
            self.harvest.generations += 1;
            if f.tag != self.song.tag() {
                continue; // generated for another song length or a chunk the window has left
            }
            n += 1;
            self.harvest.history.push_front(f.latent.clone());
            self.harvest.history.truncate(8);
            self.harvest.latest = Some(f.latent);
            self.harvest.version += 1;
            self.reflects
                .harvested(f.submitted_tick, f.finished_tick, self.harvest.version);
        }
        n
    }

    /// Full decode of the newest finished latent (for checks and tools; not on the hot path).
    pub fn latest_audio(&mut self) -> Option<demon_engine::Audio> {
        let latent = self.harvest.latest.clone()?;
        self.backend.codec.decode(&latent, 0).ok()
    }

    /// The performer-set state as a preset (`crate::preset`).
    pub fn preset(&self) -> crate::preset::Preset {
        let sr = self.facts.sample_rate as f64;
        let band = self
            .playback
            .buffer
            .band()
            .map(|b| (b.start as f64 / sr, b.end as f64 / sr));
        crate::preset::Preset::of(&self.controls, band)
    }

    /// A snapshot for status endpoints and UIs.
    pub fn state(&mut self) -> SessionState {
        let sr = self.facts.sample_rate as f64;
        let adapters = self
            .backend
            .denoiser
            .adapters()
            .map(|a| a.list())
            .unwrap_or_default();
        let c = &self.controls;
        // What is conditioned (the task, the prompt the backend reports on): built once, as the
        // snapshot is taken every tick.
        let conditioned = c.conditioning_prompts().a;
        let buffer = &self.playback.buffer;
        SessionState {
            backend: self.backend.name.clone(),
            tick: self.tick,
            knobs: c.knob_map(),
            targets: c.target_map(),
            curves: c.curve_specs(),
            automation: c.lanes().clone(),
            prompt: c.prompts.a.tags.clone(),
            prompt_b: c.prompts.b.clone(),
            negative: c.prompts.negative.clone(),
            bpm: c.prompts.a.bpm,
            key: c.prompts.a.key.clone(),
            lyrics: c.prompts.a.lyrics.clone(),
            time_signature: c.prompts.a.time_signature,
            language: c.prompts.a.language.clone(),
            task: conditioned.task.unwrap_or_default(),
            task_auto: c.prompts.a.task.is_none(),
            source_analysis: c.source_analysis().cloned(),
            loudness: self.loudness.report(),
            trigger_words: c.trigger_words().into_iter().map(str::to_string).collect(),
            solver: c.solver,
            cfg_mode: c.cfg_mode,
            dcw_enabled: c.dcw_enabled,
            dcw_mode: c.dcw_mode,
            dcw_wavelet: c.dcw_wavelet,
            source: c.source().map(|s| s.name.clone()),
            timbre_reference: c
                .reference(crate::control::ReferenceRole::Timbre)
                .map(|s| s.name.clone()),
            structure_reference: c
                .reference(crate::control::ReferenceRole::Structure)
                .map(|s| s.name.clone()),
            song_seconds: self.facts.seconds(self.song.frames),
            window_seconds: self.facts.seconds(self.song.window),
            chunk_offset_seconds: self.facts.seconds(self.song.chunk_offset),
            playhead_seconds: buffer.playhead() as f64 / sr,
            loop_band: buffer
                .band()
                .map(|b| (b.start as f64 / sr, b.end as f64 / sr)),
            playing: self.playback.playing,
            idle: self.is_idle(),
            depth: self.pipeline.depth(),
            realtime: self.budget.report(self.depth_cap),
            active_slots: self.pipeline.active_slots(),
            queue: self.pipeline.queue_len(),
            generations: self.harvest.generations,
            tick_ms: self.last_tick_ms,
            decode_ms: self.last_decode_ms,
            lead_ms: self.facts.frames_ms(self.playback.lead_frames as usize) as f32,
            adaptive_lead: self.cfg.adaptive_lead,
            knob_to_ear: self.ear.report(),
            slew_per_second: c.slew_per_second(),
            receptive_field: self.playback.decoder.field,
            adapters,
            lora_library: self.library.entries().to_vec(),
            used: self
                .backend
                .conditioner
                .prompt_use(&conditioned)
                .map(|prompt| PromptUsed {
                    prompt,
                    seed: c.seed(),
                }),
        }
    }
}

/// What the backend made of prompt A (style, tempo, key, the words it did not understand) and
/// the seed new generations use: what is really playing, shown beside what was asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptUsed {
    #[serde(flatten)]
    pub prompt: demon_engine::PromptUse,
    pub seed: u64,
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
    /// Knob automation lanes by knob name (`crate::automation`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub automation: BTreeMap<String, crate::automation::AutomationLane>,
    pub prompt: String,
    pub prompt_b: Option<String>,
    pub negative: Option<String>,
    pub bpm: Option<f32>,
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lyrics: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_signature: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The task the prompts are conditioned for, and whether the session chose it (`auto`:
    /// a cover while a source plays).
    #[serde(default)]
    pub task: demon_engine::GenerationTask,
    #[serde(default)]
    pub task_auto: bool,
    /// Tempo, key, duration and loudness measured on the source (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_analysis: Option<crate::analysis::SourceAnalysis>,
    /// The loudness of what plays and the matcher's gain (`crate::loudness`).
    #[serde(default)]
    pub loudness: crate::loudness::LoudnessReport,
    /// Trigger words of the enabled adapters, prepended to prompts A and B.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trigger_words: Vec<String>,
    pub solver: SolverKind,
    pub cfg_mode: CfgMode,
    pub dcw_enabled: bool,
    pub dcw_mode: DcwMode,
    /// The wavelet of DCW's band split (`haar`, `db2`…`db8`, `sym2`…`sym8`).
    #[serde(default)]
    pub dcw_wavelet: demon_engine::Wavelet,
    pub source: Option<String>,
    /// The names of the separate timbre and structure references (absent: the source's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timbre_reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structure_reference: Option<String>,
    pub song_seconds: f64,
    pub window_seconds: f64,
    pub chunk_offset_seconds: f64,
    pub playhead_seconds: f64,
    pub loop_band: Option<(f64, f64)>,
    pub playing: bool,
    /// The idle pause holds generation (`SessionConfig::idle_pause_seconds`): the loop plays
    /// what it holds until the next control.
    #[serde(default)]
    pub idle: bool,
    /// The ring depth that runs: the `depth` knob, or less while the degrade policy caps it.
    pub depth: usize,
    /// The real-time budget: load, overload, the degrade policy's depth cap.
    pub realtime: RealtimeReport,
    pub active_slots: usize,
    pub queue: usize,
    pub generations: u64,
    pub tick_ms: f32,
    pub decode_ms: f32,
    pub lead_ms: f32,
    /// Whether the lead adapts (`demon serve` by default) or is fixed.
    #[serde(default)]
    pub adaptive_lead: bool,
    /// Knob-to-ear latency per class (`shared_lane`, `per_slot`, `prompt`, ...): control
    /// received → first sample a client played that reflects it (docs/protocol.md).
    #[serde(default)]
    pub knob_to_ear: BTreeMap<String, ClassLatency>,
    pub slew_per_second: f64,
    pub receptive_field: ReceptiveField,
    pub adapters: Vec<demon_engine::AdapterInfo>,
    /// The LoRA library (`--lora-dir`): every adapter found, loaded or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora_library: Vec<crate::lora_library::LibraryEntry>,
    /// What the backend plays for prompt A; absent when it has nothing to report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<PromptUsed>,
}

impl SessionState {
    /// The name of the separate reference of `role`, if one is set.
    pub fn reference(&self, role: crate::control::ReferenceRole) -> Option<&str> {
        match role {
            crate::control::ReferenceRole::Timbre => self.timbre_reference.as_deref(),
            crate::control::ReferenceRole::Structure => self.structure_reference.as_deref(),
        }
    }
}

/// Knob names in the catalog (for UIs and agents).
pub fn knob_names() -> Vec<&'static str> {
    crate::controls::KNOBS.iter().map(|k| k.name).collect()
}
