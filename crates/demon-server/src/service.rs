//! The service layer: every operation the surfaces (WebSocket, REST, MCP, OSC, MIDI) share, in
//! one place: apply a control (resolving library and file sources first), decode an upload,
//! start and stop recordings, hand out the loop, the state, the knob catalog and the library,
//! render offline, MIDI learn. Limits are enforced here too, so a surface cannot forget one.
//!
//! Surfaces turn their input into calls of this module and its answers into their own framing
//! (`protocol.rs` types); the service talks to the session's runner through its
//! `SessionHandle`. Waiting for the runner (controls, recordings, the loop) is a future that
//! holds no thread; only CPU or disk work (decoding an upload or a source file, writing a WAV,
//! an offline render) runs in the async runtime's blocking pool. A control is queued the moment
//! [`Service::queue`] is called, so a surface can read its next request while the last one waits
//! for its tick, and the controls still apply in the order they came.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use demon_live::SessionError;
use demon_live::analysis::SourceAnalysis;
use demon_live::bus::Subscriber;
use demon_live::control::{ControlMessage, ReferenceRole, SourceSpec};
use demon_live::controls::{CURVE_NAMES, KNOBS};
use demon_live::core::SessionState;
use demon_live::media::MediaDirs;
use demon_live::preset::{Preset, PresetSource};
use demon_live::session::{LoopSnapshot, SessionHandle};
use serde::{Deserialize, Serialize};

use crate::midi_learn::{CcBinding, Learn, MidiMap, NoteBinding};
use crate::options::{Limits, ServerOptions};
use crate::protocol::{
    ApiError, CcMode, Compression, ControlAck, ErrorCode, Health, KnobInfo, KnobReading,
    LimitsInfo, MidiLearnReply, NoteAction, PROTOCOL_VERSION, Ready, RecordingStarted,
    RecordingStopped, RenderDone,
};

/// Who sent a control (the `origin` of its `applied` echo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A WebSocket client, by its id (from 1).
    Client(u64),
    Rest,
    Osc,
    Midi,
    Mcp,
}

impl Origin {
    /// The number in echoes (docs/protocol.md, `applied.origin`).
    pub fn id(self) -> u64 {
        match self {
            Self::Client(id) => id,
            Self::Rest => 0,
            Self::Osc => u64::MAX - 1,
            Self::Midi => u64::MAX - 2,
            Self::Mcp => u64::MAX - 3,
        }
    }
}

/// An offline render asked for by an agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OfflineRender {
    /// Style words, mood, "124 bpm", "A minor"...
    pub prompt: String,
    /// Length in seconds (1..=600).
    pub seconds: f64,
    /// Noise seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// 1 = from noise; lower keeps more of the live source.
    #[serde(default)]
    pub denoise: Option<f32>,
    /// Use the live session's source.
    #[serde(default)]
    pub use_live_source: bool,
}

/// Turns a source name (`library:STYLE[:N]`, or a file path on the server) into something the
/// runner accepts. Backend-specific, provided by whoever starts the server.
pub type ResolveSource = Arc<dyn Fn(&str) -> Result<SourceSpec, SessionError> + Send + Sync>;

/// Renders a song offline; returns the WAV's path.
pub type RenderOffline = Arc<dyn Fn(&OfflineRender) -> Result<PathBuf, SessionError> + Send + Sync>;

/// Backend-specific help the server needs without naming a backend.
#[derive(Clone)]
pub struct Hooks {
    pub resolve_source: ResolveSource,
    /// Built-in sources for the source menu.
    pub library: Vec<String>,
    pub render_offline: RenderOffline,
}

/// The loop as a WAV, ready to send: a header, then the samples converted a piece at a time
/// from a snapshot of the loop (the snapshot shares the runner's storage: no copy).
pub struct LoopWav {
    header: [u8; 44],
    snapshot: LoopSnapshot,
}

/// Frames converted per piece of [`LoopWav::pieces`] (512 KiB of float stereo).
const LOOP_WAV_PIECE_FRAMES: usize = 1 << 16;

impl LoopWav {
    /// Bytes of the whole file.
    pub fn len_bytes(&self) -> u64 {
        44 + self.snapshot.len() as u64 * 2 * 4
    }

    /// The header, then the samples in pieces of [`LOOP_WAV_PIECE_FRAMES`] frames, each made
    /// when it is asked for.
    pub fn pieces(self) -> impl Iterator<Item = Vec<u8>> + Send {
        let frames = self.snapshot.len();
        let snapshot = self.snapshot;
        std::iter::once(self.header.to_vec()).chain((0..frames).step_by(LOOP_WAV_PIECE_FRAMES).map(
            move |at| {
                let n = LOOP_WAV_PIECE_FRAMES.min(frames - at);
                let planes = snapshot.copy_range(at, n);
                demon_audio::wav_sample_bytes(&planes, demon_audio::WavFormat::Float32)
            },
        ))
    }
}

/// Token bucket for control messages (one per WebSocket connection).
pub struct RateLimit {
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(per_second: f64) -> Self {
        Self {
            tokens: per_second,
            per_second,
            last: Instant::now(),
        }
    }

    /// Take one token, or say why not.
    pub fn check(&mut self) -> Result<(), ApiError> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_second)
            .min(self.per_second);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("more than {} control messages per second", self.per_second),
            ))
        }
    }
}

/// The shared operations, with the session handle and the server's options.
pub struct Service {
    handle: SessionHandle,
    opts: ServerOptions,
    hooks: Hooks,
    media: MediaDirs,
    next_client: AtomicU64,
    next_recording: AtomicU64,
    midi: MidiMap,
    /// OSC packets from senders outside `--osc-allow`.
    osc_dropped: AtomicU64,
    /// OSC packets and messages that were malformed, unknown or refused by the session.
    osc_rejected: AtomicU64,
    /// OSC values clamped into their range.
    osc_clamped: AtomicU64,
    /// Source changes take effect in the order they arrived (see [`SourceOrder`]).
    sources: SourceOrder,
}

/// The order of source changes. Each one (a `set_source`, an upload) takes the next number
/// when it arrives, before any decoding; when it is ready to apply it goes to the runner only
/// if no later source change has arrived meanwhile, so a "none" or another source chosen
/// while an upload decodes wins over the late upload. Checking and queueing happen under one
/// lock, so two changes reach the runner's (first in, first out) queue in their order.
#[derive(Default)]
struct SourceOrder {
    arrived: AtomicU64,
    queueing: tokio::sync::Mutex<()>,
}

fn internal(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("internal error: {e}"))
}

impl Service {
    pub fn new(handle: SessionHandle, opts: ServerOptions, hooks: Hooks) -> Self {
        let midi = MidiMap::load(&opts.midi_map);
        let media = MediaDirs::new(
            opts.media_dirs
                .iter()
                .cloned()
                .chain([opts.recordings_dir.clone()]),
        );
        Self {
            handle,
            opts,
            hooks,
            media,
            next_client: AtomicU64::new(1),
            next_recording: AtomicU64::new(1),
            midi,
            osc_dropped: AtomicU64::new(0),
            osc_rejected: AtomicU64::new(0),
            osc_clamped: AtomicU64::new(0),
            sources: SourceOrder::default(),
        }
    }

    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    pub fn limits(&self) -> Limits {
        self.opts.limits
    }

    /// One more OSC packet dropped for its sender (shown in `/api/health`).
    pub fn count_osc_dropped(&self) {
        self.osc_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// One more OSC packet or message that could not be used (shown in `/api/health`).
    pub fn count_osc_rejected(&self) {
        self.osc_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// One more OSC value clamped into its range (shown in `/api/health`).
    pub fn count_osc_clamped(&self) {
        self.osc_clamped.fetch_add(1, Ordering::Relaxed);
    }

    /// A fresh WebSocket client id.
    pub fn new_client(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> Subscriber {
        self.handle.subscribe()
    }

    pub fn sample_rate(&self) -> u32 {
        self.handle.sample_rate()
    }

    pub fn midi(&self) -> &MidiMap {
        &self.midi
    }

    pub fn library(&self) -> &[String] {
        &self.hooks.library
    }

    /// The state after the last tick (never waits for the runner).
    pub fn state(&self) -> Result<SessionState, ApiError> {
        self.handle
            .state()
            .ok_or_else(|| SessionError::Stopped(Some("no state yet".into())).into())
    }

    /// The adapters in the model and the library's.
    pub fn loras(&self) -> Result<crate::protocol::Loras, ApiError> {
        let st = self.state()?;
        Ok(crate::protocol::Loras {
            adapters: st.adapters,
            library: st.lora_library,
        })
    }

    pub fn health(&self) -> Health {
        let st = self.handle.state();
        let h = self.handle.health();
        Health {
            ok: st.is_some() && h.ok(),
            backend: st.as_ref().map(|s| s.backend.clone()).unwrap_or_default(),
            tick: st.as_ref().map_or(0, |s| s.tick),
            realtime: st.map(|s| s.realtime).unwrap_or_default(),
            error: h.tick_error,
            recording_error: h.recording_error,
            osc_dropped_packets: self.osc_dropped.load(Ordering::Relaxed),
            osc_rejected_messages: self.osc_rejected.load(Ordering::Relaxed),
            osc_clamped_values: self.osc_clamped.load(Ordering::Relaxed),
            limits: self.limits_info(),
        }
    }

    /// The limits, for `/api/health`.
    pub fn limits_info(&self) -> LimitsInfo {
        let l = self.opts.limits;
        LimitsInfo {
            max_text_bytes: l.max_text_bytes,
            max_binary_bytes: l.max_binary_bytes,
            max_upload_seconds: l.max_upload_seconds,
            max_upload_samples: l.max_upload_samples,
            max_controls_per_second: l.max_controls_per_second,
            reply_timeout_ms: l.reply_timeout.as_millis() as u64,
            header_read_timeout_ms: l.header_read_timeout.as_millis() as u64,
            max_client_queue_bytes: l.max_client_queue_bytes,
            min_resync_interval_ms: l.min_resync_interval.as_millis() as u64,
        }
    }

    /// The knob catalog plus one `lora:<id>` knob per adapter the backend has.
    pub fn knobs(&self) -> Vec<KnobInfo> {
        let mut list: Vec<KnobInfo> = KNOBS.iter().map(KnobInfo::from).collect();
        if let Some(st) = self.handle.state() {
            for a in st.adapters {
                list.push(KnobInfo {
                    name: format!("{}{}", demon_live::controls::LORA_PREFIX, a.id),
                    min: 0.0,
                    max: 2.0,
                    default: 0.0,
                    integer: false,
                    slewed: true,
                    class: demon_live::control::PropagationClass::GlobalWeights,
                    help: lora_help(&a),
                });
            }
        }
        list
    }

    /// One adapter's metadata (`get_lora_metadata`): its id, strength, the modules it touches
    /// and what its files say (trigger words, recommended strength, group).
    pub fn lora(&self, id: &str) -> Result<demon_engine::AdapterInfo, ApiError> {
        let st = self.state()?;
        if st.adapters.is_empty() && st.lora_library.is_empty() {
            return Err(ApiError::new(
                ErrorCode::UnsupportedByBackend,
                format!("the {} backend has no LoRA adapters", st.backend),
            ));
        }
        // A library adapter not loaded yet is described by what its files say.
        let registered = st
            .lora_library
            .into_iter()
            .map(|e| demon_engine::AdapterInfo {
                id: e.id,
                strength: 0.0,
                rank: 0,
                targets: 0,
                metadata: e.metadata,
            });
        let mut all = st.adapters.into_iter().chain(registered);
        all.find(|a| a.id == id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no LoRA adapter `{id}` (list_loras names them)"),
            )
        })
    }

    /// One knob's effective and target value.
    pub fn knob(&self, name: &str) -> Result<KnobReading, ApiError> {
        let st = self.state()?;
        match (st.knobs.get(name), st.targets.get(name)) {
            (Some(v), Some(t)) => Ok(KnobReading {
                name: name.to_string(),
                value: *v,
                target: *t,
            }),
            _ => Err(SessionError::UnknownKnob { name: name.into() }.into()),
        }
    }

    /// The handshake for a client connecting now, whose loop is `snapshot`.
    /// The `ready` message for a client about to get a loop of `samples` per channel.
    pub fn ready(&self, client_id: u64, samples: usize) -> Result<Ready, ApiError> {
        let state = self.state()?;
        let sample_rate = self.sample_rate();
        Ok(Ready {
            version: PROTOCOL_VERSION,
            client_id,
            sample_rate,
            channels: 2,
            samples: samples as u64,
            song_seconds: samples as f64 / sample_rate as f64,
            backend: state.backend.clone(),
            knobs: self.knobs(),
            curves: CURVE_NAMES.iter().map(|c| c.to_string()).collect(),
            library: self.hooks.library.clone(),
            lora_folders: self.handle.lora_dirs().to_vec(),
            compression: Compression::None,
            state,
        })
    }

    /// Refuse a text body over the limit before parsing it.
    pub fn check_text_size(&self, bytes: usize, what: &str) -> Result<(), ApiError> {
        let max = self.opts.limits.max_text_bytes;
        if bytes > max {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("{what} are limited to {max} bytes"),
            ));
        }
        Ok(())
    }

    /// A control message from JSON bytes (REST bodies), size-checked.
    pub fn parse_control(&self, body: &[u8]) -> Result<ControlMessage, ApiError> {
        self.check_text_size(body.len(), "control messages")?;
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(ErrorCode::BadMessage, format!("not a control message: {e}"))
        })
    }

    /// A source by the name a person or agent types: `none`, `library:STYLE[:N]` or a file path
    /// on the server. May decode a file: call it off the async workers.
    pub fn source_by_name(&self, name: &str) -> Result<SourceSpec, ApiError> {
        if name == "none" {
            return Ok(SourceSpec::None);
        }
        if name.starts_with("library:") {
            return Ok((self.hooks.resolve_source)(name)?);
        }
        self.file_source(name)
    }

    /// A file source, only from the media folders (`demon_live::media`); the hook sees the
    /// canonical path.
    fn file_source(&self, path: &str) -> Result<SourceSpec, ApiError> {
        let real = self.media.resolve(path)?;
        let real = real
            .to_str()
            .ok_or_else(|| SessionError::bad_source(path, demon_live::media::REFUSAL))?;
        Ok((self.hooks.resolve_source)(real)?)
    }

    /// A library or file spec as audio or a latent; others as they are.
    fn resolve_spec(&self, spec: &SourceSpec) -> Result<SourceSpec, ApiError> {
        Ok(match spec {
            SourceSpec::Library { style, index } => {
                (self.hooks.resolve_source)(&format!("library:{style}:{index}"))?
            }
            SourceSpec::File { path } => self.file_source(path)?,
            other => other.clone(),
        })
    }

    /// A preset's source (or reference: `field` names which, `playing` is what plays there
    /// now) as the runner takes it, and what cannot be restored: a file is found again
    /// through the media folders, a library song composed again; an upload has no file, so
    /// what plays stays (`None`, with a warning, unless it is that upload).
    fn preset_source(
        &self,
        field: &str,
        source: &PresetSource,
        playing: Option<&str>,
    ) -> Result<(Option<SourceSpec>, Vec<String>), ApiError> {
        let in_field =
            |e: ApiError| ApiError::new(e.code, format!("preset field `{field}`: {}", e.message));
        let spec = match source {
            PresetSource::None => SourceSpec::None,
            PresetSource::Library { style, index } => SourceSpec::Library {
                style: style.clone(),
                index: *index,
            },
            PresetSource::File { path } => SourceSpec::File { path: path.clone() },
            PresetSource::Upload { name } => {
                let warnings = if playing == Some(name.as_str()) {
                    Vec::new()
                } else {
                    vec![format!(
                        "{field}: the upload `{name}` is not restorable (an upload has no file on the server); {} is kept",
                        if field == "source" {
                            "the playing source"
                        } else {
                            "the reference set now"
                        }
                    )]
                };
                return Ok((None, warnings));
            }
        };
        Ok((
            Some(self.resolve_spec(&spec).map_err(in_field)?),
            Vec::new(),
        ))
    }

    /// Library and file sources become audio or a latent (the runner takes only those), and a
    /// preset's source and references their sources; returns the warnings of what could not
    /// be restored. May decode a file: call it off the async workers.
    fn resolve(&self, message: ControlMessage) -> Result<(ControlMessage, Vec<String>), ApiError> {
        Ok(match message {
            ControlMessage::SetSource { source } => (
                ControlMessage::SetSource {
                    source: self.resolve_spec(&source)?,
                },
                Vec::new(),
            ),
            ControlMessage::SetReference { role, source } => (
                ControlMessage::SetReference {
                    role,
                    source: self.resolve_spec(&source)?,
                },
                Vec::new(),
            ),
            ControlMessage::LoadPreset {
                preset,
                source,
                references,
            } => {
                // A message that names its source (a session file's last state) is taken as
                // it is; one without takes the source and references of its preset.
                let from_preset = source.is_none();
                let state = self.handle.state();
                let mut warnings = Vec::new();
                let source = match source {
                    Some(s) => Some(self.resolve_spec(&s)?),
                    None => {
                        let playing = state.as_ref().and_then(|s| s.source.clone());
                        let (s, w) =
                            self.preset_source("source", &preset.source, playing.as_deref())?;
                        warnings.extend(w);
                        s
                    }
                };
                let mut resolved = BTreeMap::new();
                for (role, s) in &references {
                    resolved.insert(*role, self.resolve_spec(s)?);
                }
                if from_preset && references.is_empty() {
                    for role in ReferenceRole::ALL {
                        let (s, w) = self.preset_source(
                            &format!("references.{}", role.name()),
                            role.in_preset(&preset.references),
                            state.as_ref().and_then(|s| s.reference(role)),
                        )?;
                        warnings.extend(w);
                        if let Some(s) = s {
                            resolved.insert(role, s);
                        }
                    }
                }
                (
                    ControlMessage::LoadPreset {
                        preset,
                        source,
                        references: resolved,
                    },
                    warnings,
                )
            }
            other => (other, Vec::new()),
        })
    }

    /// Whether the control names a source to resolve first (a library entry, a file, a
    /// preset's source reference), which [`apply`](Self::apply) does before queueing it;
    /// [`queue`](Self::queue) refuses those.
    pub fn needs_resolving(message: &ControlMessage) -> bool {
        matches!(
            message,
            ControlMessage::SetSource {
                source: SourceSpec::Library { .. } | SourceSpec::File { .. }
            } | ControlMessage::SetReference {
                source: SourceSpec::Library { .. } | SourceSpec::File { .. },
                ..
            } | ControlMessage::LoadPreset { .. }
        )
    }

    /// Apply one control message: resolve its source if it names one, hand it to the runner,
    /// wait until it is applied (between two ticks) or refused.
    pub async fn apply(
        self: &Arc<Self>,
        origin: Origin,
        message: ControlMessage,
    ) -> Result<ControlAck, ApiError> {
        let t0 = Instant::now();
        let arrival = Self::is_source_change(&message).then(|| self.source_arrived());
        let (message, warnings) = if Self::needs_resolving(&message) {
            let svc = self.clone();
            tokio::task::spawn_blocking(move || svc.resolve(message))
                .await
                .map_err(internal)??
        } else {
            (message, Vec::new())
        };
        let mut ack = match arrival {
            Some(n) => self.source_control(origin, message, t0, n).await,
            None => self.control(origin, message, t0).await,
        }?;
        ack.warnings = warnings;
        Ok(ack)
    }

    /// Load a preset document (JSON bytes, size-checked; errors name the field) through
    /// [`apply`](Self::apply), like any control.
    pub async fn load_preset(
        self: &Arc<Self>,
        origin: Origin,
        body: &[u8],
    ) -> Result<ControlAck, ApiError> {
        let preset = Preset::from_json(body)?;
        self.apply(origin, ControlMessage::load_preset(preset))
            .await
    }

    /// Scan the LoRA folders again (on a blocking thread: it reads every adapter's header),
    /// taken in by the session at its next tick boundary.
    pub async fn rescan_loras(&self) -> Result<demon_live::lora_library::RescanReport, ApiError> {
        let handle = self.handle.clone();
        let timeout = self.opts.limits.reply_timeout;
        tokio::task::spawn_blocking(move || handle.rescan_loras(timeout))
            .await
            .map_err(|e| {
                ApiError::new(ErrorCode::BackendError, format!("the rescan stopped: {e}"))
            })?
            .map_err(ApiError::from)
    }

    /// The performer-set state as a preset, read between two ticks.
    pub async fn preset(&self) -> Result<Preset, ApiError> {
        runner(
            self.opts.limits.reply_timeout,
            self.handle.preset_async(),
            "the preset",
        )
        .await
    }

    /// A source change named the way `demon` names sources (`none`, `library:STYLE[:N]`, a file
    /// in the media folders). Its arrival number is taken now, before the name is resolved (a
    /// file may take seconds to decode), so a source change that arrives later wins over it.
    pub async fn set_source_by_name(
        self: &Arc<Self>,
        origin: Origin,
        name: String,
    ) -> Result<ControlAck, ApiError> {
        let t0 = Instant::now();
        let n = self.source_arrived();
        let svc = self.clone();
        let source = tokio::task::spawn_blocking(move || svc.source_by_name(&name))
            .await
            .map_err(internal)??;
        self.source_control(origin, ControlMessage::SetSource { source }, t0, n)
            .await
    }

    /// Tempo, key, duration and loudness: of the playing source (`None`; measured when it
    /// was loaded, on what its latent decodes to), or of an audio file in the media folders.
    /// Library songs are latents: load one as the source to analyse it.
    pub async fn analyze(
        self: &Arc<Self>,
        source: Option<String>,
    ) -> Result<SourceAnalysis, ApiError> {
        let Some(name) = source.filter(|n| !n.trim().is_empty()) else {
            return self.state()?.source_analysis.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    "no source is playing: name an audio file in the media folders to analyse it",
                )
            });
        };
        let svc = self.clone();
        tokio::task::spawn_blocking(move || {
            if !name.starts_with("library:") {
                // A file's own audio, read from the media folders: a WAV that demon wrote
                // resolves to the latent it carries, but it is analysed as it sounds.
                let real = svc.media.resolve(&name)?;
                let limits = demon_audio::LoadLimits {
                    max_seconds: svc.opts.limits.max_upload_seconds,
                    max_samples: svc.opts.limits.max_upload_samples,
                };
                let decoded = demon_audio::load_file(&real, limits)
                    .map_err(|e| ApiError::new(ErrorCode::BadSource, format!("`{name}`: {e}")))?;
                let audio = demon_engine::Audio::new(decoded.sample_rate, decoded.channels)
                    .map_err(|e| ApiError::new(ErrorCode::BadSource, format!("`{name}`: {e}")))?;
                return Ok(SourceAnalysis::of(&audio));
            }
            let spec = svc.source_by_name(&name)?;
            let SourceSpec::Audio { channels, .. } = spec else {
                return Err(ApiError::new(
                    ErrorCode::BadSource,
                    format!(
                        "`{name}` is not an audio file (library songs are latents: load one as the source to see its analysis)"
                    ),
                ));
            };
            let audio = demon_engine::Audio::new(svc.sample_rate(), channels)
                .map_err(|e| ApiError::new(ErrorCode::BadSource, format!("`{name}`: {e}")))?;
            Ok(SourceAnalysis::of(&audio))
        })
        .await
        .map_err(internal)?
    }

    fn is_source_change(message: &ControlMessage) -> bool {
        matches!(
            message,
            ControlMessage::SetSource { .. } | ControlMessage::LoadPreset { .. }
        )
    }

    /// The arrival number of a source change.
    fn source_arrived(&self) -> u64 {
        self.sources.arrived.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Apply the source change that arrived `n`th, unless a later one arrived while it was
    /// being decoded or resolved (then it is `superseded` and nothing changes).
    async fn source_control(
        self: &Arc<Self>,
        origin: Origin,
        message: ControlMessage,
        t0: Instant,
        n: u64,
    ) -> Result<ControlAck, ApiError> {
        let answer = {
            let _queueing = self.sources.queueing.lock().await;
            let latest = self.sources.arrived.load(Ordering::Acquire);
            if latest != n {
                return Err(ApiError::new(
                    ErrorCode::Superseded,
                    "a later source change arrived while this one was being prepared; it was not applied",
                ));
            }
            let prompt_change = Self::changes_prompt(&message);
            // Queued in arrival order under the lock, answered outside it: the runner prepares
            // a source beside its ticks (up to its source_prepare_max), and a later source change
            // must be able to reach it meanwhile and overtake this one.
            let answer = self.handle.queue_control(origin.id(), message)?;
            let timeout = self.opts.limits.reply_timeout + self.handle.source_prepare_max();
            (prompt_change, async move {
                runner(timeout, answer, "waiting for the source to be prepared").await
            })
        };
        let (prompt_change, answer) = answer;
        let tick = answer.await?;
        Ok(ControlAck {
            tick,
            latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
            source: None,
            warnings: Vec::new(),
            used: self.used_after(prompt_change),
        })
    }

    /// Whether a control changes what prompt A plays (its reply then carries `used`).
    fn changes_prompt(message: &ControlMessage) -> bool {
        matches!(
            message,
            ControlMessage::SetPrompt { .. }
                | ControlMessage::ClearBpm
                | ControlMessage::LoadPreset { .. }
        )
    }

    /// What the backend uses now, for the reply to a prompt change (the runner refreshes the
    /// state before it answers, so it holds the change).
    fn used_after(&self, prompt_change: bool) -> Option<demon_live::core::PromptUsed> {
        if prompt_change {
            self.handle.state().and_then(|s| s.used)
        } else {
            None
        }
    }

    /// Hand a resolved control to the runner and wait for its answer.
    async fn control(
        self: &Arc<Self>,
        origin: Origin,
        message: ControlMessage,
        t0: Instant,
    ) -> Result<ControlAck, ApiError> {
        self.queued(origin, message, t0)?.await
    }

    /// Queue a control for the runner now, in call order, and return the wait for its answer
    /// (a future that holds no thread, bounded by the reply timeout). `busy` at once when the
    /// runner's queue is full; a control that names a library or file source is refused (use
    /// [`apply`](Self::apply), which resolves it first).
    pub fn queue(
        self: &Arc<Self>,
        origin: Origin,
        message: ControlMessage,
    ) -> Result<
        impl std::future::Future<Output = Result<ControlAck, ApiError>> + Send + 'static,
        ApiError,
    > {
        if Self::needs_resolving(&message) {
            return Err(ApiError::new(
                ErrorCode::BadMessage,
                "a library or file source is resolved before it is queued (Service::apply)",
            ));
        }
        self.queued(origin, message, Instant::now())
    }

    fn queued(
        self: &Arc<Self>,
        origin: Origin,
        message: ControlMessage,
        t0: Instant,
    ) -> Result<
        impl std::future::Future<Output = Result<ControlAck, ApiError>> + Send + 'static,
        ApiError,
    > {
        let prompt_change = Self::changes_prompt(&message);
        // A control naming a library adapter may wait for its load (`LORA_LOAD_MAX`).
        let timeout = if message.adapter_ids().is_empty() {
            self.opts.limits.reply_timeout
        } else {
            self.opts.limits.reply_timeout + demon_live::session::LORA_LOAD_MAX
        };
        let answer = self.handle.queue_control(origin.id(), message)?;
        let handle = self.handle.clone();
        Ok(async move {
            let tick = runner(timeout, answer, "waiting for the next tick").await?;
            Ok(ControlAck {
                tick,
                latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
                source: None,
                warnings: Vec::new(),
                // The runner refreshes the state before it answers, so it holds this change.
                used: if prompt_change {
                    handle.state().and_then(|s| s.used)
                } else {
                    None
                },
            })
        })
    }

    /// A page's report that it first played a sample carrying control `control` `ago_ms`
    /// ago (docs/protocol.md, knob-to-ear latency).
    pub fn heard(&self, control: u64, ago_ms: f64) -> Result<(), ApiError> {
        Ok(self.handle.heard(control, ago_ms)?)
    }

    /// A page's report of its playhead when the slice of `tick` arrived (the adaptive lead).
    pub fn arrival(&self, tick: u64, sample: u64) -> Result<(), ApiError> {
        Ok(self.handle.arrival(tick, sample)?)
    }

    /// Send without waiting for the answer (MIDI's callback thread must not block).
    pub fn send(&self, origin: Origin, message: ControlMessage) -> Result<(), ApiError> {
        Ok(self.handle.send(origin.id(), message)?)
    }

    /// Decode an upload (streaming, straight to the session's rate and stereo), then make it
    /// the source, unless a later source change arrived meanwhile (`superseded`), or the
    /// reference of `role`; a bad file leaves the old source (or reference).
    pub async fn upload(
        self: &Arc<Self>,
        origin: Origin,
        name: String,
        role: Option<ReferenceRole>,
        bytes: Vec<u8>,
    ) -> Result<ControlAck, ApiError> {
        let limits = demon_audio::LoadLimits {
            max_seconds: self.opts.limits.max_upload_seconds,
            max_samples: self.opts.limits.max_upload_samples,
        };
        // References are not source changes: they take effect in the order they are applied.
        let arrival = role.is_none().then(|| self.source_arrived());
        let sr = self.sample_rate();
        let upload_name = name.clone();
        let audio = tokio::task::spawn_blocking(move || {
            demon_audio::decode_bytes_stereo(bytes, &upload_name, limits, sr)
        })
        .await
        .map_err(internal)?
        .map_err(|e| SessionError::BadUpload {
            name: name.clone(),
            problem: e.to_string(),
        })?;
        let source = SourceSpec::Audio {
            name: name.clone(),
            channels: audio.channels,
        };
        let mut ack = match role {
            Some(role) => {
                self.control(
                    origin,
                    ControlMessage::SetReference { role, source },
                    Instant::now(),
                )
                .await?
            }
            None => {
                self.source_control(
                    origin,
                    ControlMessage::SetSource { source },
                    Instant::now(),
                    arrival.unwrap_or_default(),
                )
                .await?
            }
        };
        ack.source = Some(name);
        Ok(ack)
    }

    /// Start recording what is played to a new WAV in the recordings folder.
    pub async fn start_recording(self: &Arc<Self>) -> Result<RecordingStarted, ApiError> {
        let name = format!(
            "demon-{}-{}.wav",
            std::process::id(),
            self.next_recording.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.opts.recordings_dir.join(&name);
        runner(
            self.opts.limits.reply_timeout,
            self.handle.start_recording_async(&path, false),
            "the recording to start",
        )
        .await?;
        Ok(RecordingStarted { recording: name })
    }

    /// Stop recording; says where to download it (`url` null when nothing was recording).
    pub async fn stop_recording(self: &Arc<Self>) -> Result<RecordingStopped, ApiError> {
        let stopped = runner(
            self.opts.limits.reply_timeout,
            self.handle.stop_recording_async(),
            "the recording to stop",
        )
        .await?;
        Ok(match stopped {
            Some((path, seconds)) => RecordingStopped {
                url: path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(|n| format!("/api/recordings/{n}")),
                seconds,
            },
            None => RecordingStopped {
                url: None,
                seconds: 0.0,
            },
        })
    }

    /// Stop the recording that runs, or start one when none does (a MIDI note's `record`).
    pub async fn toggle_recording(self: &Arc<Self>) -> Result<(), ApiError> {
        if self.stop_recording().await?.url.is_none() {
            self.start_recording().await?;
        }
        Ok(())
    }

    /// The whole loop at the next tick boundary, shared with the runner (no copy).
    pub async fn loop_snapshot(&self) -> Result<(u64, LoopSnapshot), ApiError> {
        runner(
            self.opts.limits.reply_timeout,
            self.handle.loop_audio_async(),
            "the loop",
        )
        .await
    }

    /// What the loop holds now, as a 32-bit float WAV to send piece by piece
    /// ([`LoopWav::pieces`]): nothing the size of the loop is built, so a long loop neither
    /// takes memory nor holds up other requests while a client downloads it.
    pub async fn loop_wav(&self) -> Result<LoopWav, ApiError> {
        let (_, snapshot) = self.loop_snapshot().await?;
        let frames = snapshot.len();
        let header = demon_audio::wav_header(
            demon_audio::WavFormat::Float32,
            2,
            self.sample_rate(),
            frames as u64,
        )
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("a loop of {frames} frames does not fit a WAV file"),
            )
        })?;
        Ok(LoopWav { header, snapshot })
    }

    /// A finished recording's bytes, by file name (nothing outside the recordings folder).
    pub async fn recording(&self, name: &str) -> Result<Vec<u8>, ApiError> {
        let not_found = || -> ApiError {
            SessionError::NotFound {
                what: "recording".into(),
                name: name.into(),
            }
            .into()
        };
        if name.contains('/')
            || name.contains('\\')
            || name.contains("..")
            || !name.ends_with(".wav")
        {
            return Err(not_found());
        }
        tokio::fs::read(self.opts.recordings_dir.join(name))
            .await
            .map_err(|_| not_found())
    }

    /// Render a separate song offline (not the live loop).
    pub async fn render_offline(&self, r: OfflineRender) -> Result<RenderDone, ApiError> {
        let render = self.hooks.render_offline.clone();
        let path = tokio::task::spawn_blocking(move || render(&r))
            .await
            .map_err(internal)??;
        Ok(RenderDone {
            path: path.display().to_string(),
        })
    }

    /// Map the next MIDI control change to `knob` (moved as `mode` says, with soft takeover
    /// when `pickup`), or the next note to `action`. A `preset` note recalls the state the
    /// session has now (read here, between two ticks).
    pub async fn midi_learn(
        &self,
        knob: Option<&str>,
        mode: Option<CcMode>,
        pickup: Option<bool>,
        action: Option<NoteAction>,
    ) -> Result<MidiLearnReply, ApiError> {
        let target = match (knob, action) {
            (Some(knob), None) => Learn::Knob(CcBinding {
                knob: knob.to_string(),
                mode: mode.unwrap_or_default(),
                pickup: pickup.unwrap_or(false),
            }),
            (None, Some(NoteAction::Preset)) if mode.is_none() && pickup.is_none() => {
                Learn::Note(NoteBinding {
                    action: NoteAction::Preset,
                    preset: Some(Box::new(self.preset().await?)),
                })
            }
            (None, Some(action)) if mode.is_none() && pickup.is_none() => {
                Learn::Note(NoteBinding::new(action))
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::BadMessage,
                    "midi_learn takes a `knob` (with optional `mode` and `pickup`) or an `action`",
                ));
            }
        };
        let learning = target.describe();
        self.midi.learn(target)?;
        Ok(MidiLearnReply {
            learning,
            midi: self.midi.status(),
        })
    }
}

/// Wait for the runner's answer, at most `timeout` (a future: no thread waits).
async fn runner<T>(
    timeout: std::time::Duration,
    answer: impl std::future::Future<Output = Result<T, SessionError>>,
    waiting_for: &str,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, answer).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SessionError::Timeout(format!(
            "{waiting_for}: no answer from the session in {timeout:?}"
        ))
        .into()),
    }
}

/// The help line of an adapter's strength knob: what its metadata says a performer needs.
fn lora_help(a: &demon_engine::AdapterInfo) -> String {
    let m = &a.metadata;
    let mut help = format!("Strength of adapter `{}` (0 = off).", a.id);
    if !m.trigger_words.is_empty() {
        help.push_str(&format!(
            " Trigger words, added to the prompt while it is on: {}.",
            m.trigger_words.join(", ")
        ));
    }
    if let Some(r) = m.recommended_strength {
        help.push_str(&format!(" Recommended strength {r}."));
    }
    if let Some(g) = &m.group {
        help.push_str(&format!(" Group: {g}."));
    }
    help
}
