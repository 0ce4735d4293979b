//! The wire protocol of `demon serve` (docs/protocol.md), as types: every message a WebSocket
//! client sends and receives, the REST replies, the error codes with their HTTP statuses, and
//! the binary audio frame header. The WebSocket, REST and MCP surfaces build their answers from
//! these types only, and a test parses every example of docs/protocol.md into them (and back to
//! the same JSON), so the document and the code cannot drift apart.
//!
//! Numbers that the binary header carries in 32 bits are converted with checks: a loop longer
//! than `u32::MAX` samples, or a tick or generation count past `u32::MAX` (about 5.4 years of
//! ticks at 25 per second), is a [`FrameError`], never a silently truncated field.

use std::collections::BTreeMap;

use demon_live::SessionError;
use demon_live::budget::RealtimeReport;
use demon_live::control::{ControlMessage, PropagationClass, ReferenceRole};
use demon_live::controls::KnobSpec;
use demon_live::core::SessionState;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the WebSocket protocol in `ready`.
pub const PROTOCOL_VERSION: u32 = 1;

// ------------------------------------------------------------------------------------ errors

/// The stable code of every error a client can get, over WebSocket (`error.code`), REST
/// (`code`, with [`http_status`](Self::http_status)) and MCP (a tool error's `code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // The request itself.
    /// Not JSON.
    BadJson,
    /// JSON, but not a request or control message of this protocol (a missing or mistyped
    /// field, a binary frame nobody asked for).
    BadMessage,
    /// A request `type` this server does not know.
    UnknownType,
    /// Over a size limit (text frame, control body).
    TooLarge,
    /// Over the control rate limit.
    RateLimited,
    /// A missing or wrong access token.
    Unauthorized,
    /// A `Host` or browser `Origin` this server does not accept.
    Forbidden,
    /// A state-changing request whose body is not of the type the route takes.
    UnsupportedMediaType,
    // What the session said (`demon_live::SessionError`).
    BadValue,
    UnknownKnob,
    UnknownCurve,
    UnsupportedByBackend,
    BadSource,
    BadUpload,
    NotFound,
    /// A source change (an upload, a file being read) overtaken by a later one while it was
    /// prepared: the later one wins, this one was not applied.
    Superseded,
    Busy,
    Timeout,
    Stopped,
    IoError,
    BackendError,
    /// A server bug (a task that panicked); the session carries on.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 22] = [
        Self::BadJson,
        Self::BadMessage,
        Self::UnknownType,
        Self::TooLarge,
        Self::RateLimited,
        Self::Unauthorized,
        Self::Forbidden,
        Self::UnsupportedMediaType,
        Self::BadValue,
        Self::UnknownKnob,
        Self::UnknownCurve,
        Self::UnsupportedByBackend,
        Self::BadSource,
        Self::BadUpload,
        Self::NotFound,
        Self::Superseded,
        Self::Busy,
        Self::Timeout,
        Self::Stopped,
        Self::IoError,
        Self::BackendError,
        Self::Internal,
    ];

    /// The HTTP status a REST reply with this code carries. The one place statuses are chosen.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadJson | Self::BadMessage | Self::UnknownType => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::UnsupportedMediaType => 415,
            Self::NotFound => 404,
            Self::TooLarge => 413,
            Self::BadValue
            | Self::UnknownKnob
            | Self::UnknownCurve
            | Self::UnsupportedByBackend
            | Self::BadSource
            | Self::BadUpload => 422,
            Self::Superseded => 409,
            Self::RateLimited => 429,
            Self::IoError | Self::BackendError | Self::Internal => 500,
            // Busy and stopped: the service cannot take it now (retrying later may work).
            Self::Busy | Self::Stopped => 503,
            Self::Timeout => 504,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadMessage => "bad_message",
            Self::UnknownType => "unknown_type",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BadValue => "bad_value",
            Self::UnknownKnob => "unknown_knob",
            Self::UnknownCurve => "unknown_curve",
            Self::UnsupportedByBackend => "unsupported_by_backend",
            Self::BadSource => "bad_source",
            Self::BadUpload => "bad_upload",
            Self::NotFound => "not_found",
            Self::Superseded => "superseded",
            Self::Busy => "busy",
            Self::Timeout => "timeout",
            Self::Stopped => "stopped",
            Self::IoError => "io_error",
            Self::BackendError => "backend_error",
            Self::Internal => "internal",
        }
    }
}

impl From<&SessionError> for ErrorCode {
    /// Exhaustive on purpose: a new kind of session error must choose its code here.
    fn from(e: &SessionError) -> Self {
        match e {
            SessionError::BadValue { .. } => Self::BadValue,
            SessionError::UnknownKnob { .. } => Self::UnknownKnob,
            SessionError::UnknownCurve { .. } => Self::UnknownCurve,
            SessionError::UnsupportedByBackend { .. } => Self::UnsupportedByBackend,
            SessionError::BadSource { .. } => Self::BadSource,
            SessionError::BadUpload { .. } => Self::BadUpload,
            SessionError::NotFound { .. } => Self::NotFound,
            SessionError::Busy(_) => Self::Busy,
            SessionError::Superseded(_) => Self::Superseded,
            SessionError::Timeout(_) => Self::Timeout,
            SessionError::Stopped(_) => Self::Stopped,
            SessionError::Io { .. } => Self::IoError,
            SessionError::Backend(_) => Self::BackendError,
        }
    }
}

/// An error as every surface reports it: a code and a sentence naming the problem.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        Self {
            code: ErrorCode::from(&e),
            message: e.to_string(),
        }
    }
}

// ----------------------------------------------------------------------- client → server

/// One text frame from a WebSocket client: a request with an optional `id` (any JSON value)
/// that the answer echoes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientMessage {
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub id: Value,
    #[serde(flatten)]
    pub request: Request,
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Apply a control message; answered by `reply` or `error`.
    Control { message: ControlMessage },
    /// Answered by `state`.
    GetState,
    /// Answered by `pong`.
    Ping,
    /// The next binary frame holds an audio file to make the source (or, with `role`, the
    /// timbre or structure reference); `name` hints the format.
    Upload {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<ReferenceRole>,
    },
    /// Start or stop recording what is played to a WAV.
    Record { action: RecordAction },
    /// Map the next MIDI control change the server receives to `knob` (with `mode` and
    /// `pickup`), or the next note to `action`: exactly one of `knob` and `action`.
    MidiLearn {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        knob: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<CcMode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pickup: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<NoteAction>,
    },
    /// Send the whole loop again (a full-buffer frame).
    Resync,
    /// The page first played a sample of a `reflects` slice carrying control `control`,
    /// `ago_ms` before it sent this (negative: that much later, its output latency). Not
    /// answered unless refused.
    Heard { control: u64, ago_ms: f64 },
    /// The slice of `tick` arrived with the page's playhead at `sample` (feeds the adaptive
    /// lead). Not answered unless refused.
    Arrival { tick: u64, sample: u64 },
    /// Answered by `preset`: the performer-set state as a preset (`docs/protocol.md`,
    /// "Presets"). Loading one is the control `load_preset`.
    GetPreset,
    /// Scan the LoRA folders again; answered by `reply` with what was added and removed.
    RescanLoras,
}

impl Request {
    /// Every request `type` (to tell an unknown type from a malformed request).
    pub const TYPES: [&'static str; 11] = [
        "control",
        "get_state",
        "ping",
        "upload",
        "record",
        "midi_learn",
        "resync",
        "heard",
        "arrival",
        "get_preset",
        "rescan_loras",
    ];
}

/// How a MIDI control change's value moves its knob (docs/protocol.md "MIDI").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CcMode {
    /// 0..127 spans the knob's range (faders, pots).
    #[default]
    Absolute,
    /// Endless encoder, two's complement: 1..63 up by that many steps, 127..64 down by 1..64.
    RelativeTwosComplement,
    /// Endless encoder, offset 64: 65.. up, ..63 down, by the distance from 64.
    RelativeOffset64,
    /// Endless encoder, sign bit: bit 6 set is down, the low six bits are the steps.
    RelativeSignBit,
}

/// What a MIDI note-on can do (docs/protocol.md "MIDI").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteAction {
    /// A new random seed for the next generations.
    NewSeed,
    /// Start a recording, or stop the one that runs.
    Record,
    /// Load the preset captured when the note was learned (one per note: pads as sound slots).
    Preset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordAction {
    Start,
    Stop,
}

/// Parse a client's text frame, telling apart the three ways it can be wrong.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, (Value, ApiError)> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        (
            Value::Null,
            ApiError::new(ErrorCode::BadJson, format!("not JSON: {e}")),
        )
    })?;
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let Some(kind) = v.get("type").and_then(Value::as_str) else {
        return Err((
            id,
            ApiError::new(ErrorCode::BadMessage, "a request needs a string `type`"),
        ));
    };
    if !Request::TYPES.contains(&kind) {
        return Err((
            id,
            ApiError::new(
                ErrorCode::UnknownType,
                format!("unknown request type `{kind}`"),
            ),
        ));
    }
    let kind = kind.to_string();
    serde_json::from_value(v).map_err(|e| {
        (
            id,
            ApiError::new(
                ErrorCode::BadMessage,
                format!("not a valid `{kind}` request: {e}"),
            ),
        )
    })
}

// ----------------------------------------------------------------------- server → client

/// Every text frame the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message of a connection (then one full-buffer frame).
    Ready(Box<Ready>),
    Reply(Reply),
    Error(ErrorReply),
    /// A change any client (or OSC, MIDI, MCP, REST) made, applied before `tick`.
    Applied(Applied),
    /// Tick statistics, about four times a second.
    Stats(Stats),
    /// Slew-limited knob values moved.
    Params(Params),
    State {
        #[serde(default)]
        id: Value,
        state: Box<SessionState>,
    },
    Notice {
        message: String,
    },
    /// The answer to `get_preset`.
    Preset {
        #[serde(default)]
        id: Value,
        preset: Box<demon_live::preset::Preset>,
    },
    Pong {
        #[serde(default)]
        id: Value,
    },
    /// The loop slice `[start_sample, start_sample + samples)` of `tick` is the first to carry
    /// the controls `controls`: a page answers `heard` when its playhead first plays it.
    Reflects(Reflects),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reflects {
    pub tick: u64,
    pub start_sample: u64,
    pub samples: u64,
    pub controls: Vec<u64>,
}

impl ServerMessage {
    /// The JSON text of the message. Serialising these types cannot fail (no maps with
    /// non-string keys, no foreign serialisers); should it ever, the client gets an `error`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"type":"error","id":null,"code":"internal","error":"cannot serialise a reply: {e}"}}"#
            )
        })
    }

    pub fn error(id: Value, e: ApiError) -> Self {
        Self::Error(ErrorReply {
            id,
            code: e.code,
            error: e.message,
        })
    }

    pub fn reply(id: Value, result: ReplyResult) -> Self {
        Self::Reply(Reply {
            id,
            ok: true,
            result,
        })
    }
}

/// The handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub version: u32,
    pub client_id: u64,
    pub sample_rate: u32,
    pub channels: u8,
    /// Samples per channel of the loop.
    pub samples: u64,
    pub song_seconds: f64,
    pub backend: String,
    pub knobs: Vec<KnobInfo>,
    pub curves: Vec<String>,
    /// Built-in sources (`library:STYLE:N`).
    pub library: Vec<String>,
    /// The LoRA folders the session scans (`--lora-dir`); absent: no LoRA library.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora_folders: Vec<std::path::PathBuf>,
    /// How this connection's delta frames come (what its upgrade asked for).
    #[serde(default)]
    pub compression: Compression,
    pub state: SessionState,
}

/// The answer to a request that succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub id: Value,
    /// Always true (an `error` is the other answer).
    pub ok: bool,
    #[serde(flatten)]
    pub result: ReplyResult,
}

/// What a successful request returns, by kind of request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplyResult {
    /// A control (or an upload, which names the new `source`) was applied.
    Applied(ControlAck),
    RecordingStarted(RecordingStarted),
    MidiLearn(MidiLearnReply),
    RecordingStopped(RecordingStopped),
    LoraRescan(demon_live::lora_library::RescanReport),
}

/// A control message was applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlAck {
    /// The tick the change was applied before.
    pub tick: u64,
    /// Received → applied, in milliseconds.
    pub latency_ms: f64,
    /// For an upload: the new source's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What was applied only in part (a preset whose upload source is not restorable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// For a prompt change (`set_prompt`, `clear_bpm`, `load_preset`): the style, tempo, key
    /// and seed the backend now uses, and a `fallback` note naming words it did not understand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<demon_live::core::PromptUsed>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordingStarted {
    /// The WAV's file name (served at `/api/recordings/NAME` once stopped).
    pub recording: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordingStopped {
    /// Where to download the WAV; null when no recording was running.
    pub url: Option<String>,
    /// Length of what was recorded.
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MidiLearnReply {
    /// What the next control change (a knob) or note (`note: ACTION`) will be mapped to.
    pub learning: String,
    /// The MIDI system's status ("listening to …", or why there is no MIDI).
    pub midi: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    #[serde(default)]
    pub id: Value,
    pub code: ErrorCode,
    /// A sentence naming the problem.
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub tick: u64,
    /// Who sent it: a WebSocket client id, or one of the surface origins
    /// (REST 0, OSC 2^64−2, MIDI 2^64−3, MCP 2^64−4).
    pub origin: u64,
    /// What changed; sources by name only (no audio or latent data).
    pub message: ControlMessage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub tick: u64,
    pub tick_ms: f32,
    pub decode_ms: f32,
    pub gen_per_s: f32,
    pub active_slots: usize,
    pub queue: usize,
    pub lead_ms: f32,
    /// The real-time budget: load, overload, the degrade policy's depth cap.
    pub realtime: RealtimeReport,
    /// Knob-to-ear latency per class (as in `state.knob_to_ear`).
    #[serde(default)]
    pub knob_to_ear: BTreeMap<String, demon_live::latency::ClassLatency>,
    /// Loudness of what plays and the matcher's gain (pages apply `gain_db` to their loop).
    #[serde(default)]
    pub loudness: demon_live::loudness::LoudnessReport,
    /// The idle pause holds generation (`demon serve --idle-pause-s`) until the next control.
    #[serde(default)]
    pub idle: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub tick: u64,
    /// Knob values the engine uses now (slew-limited).
    pub effective: BTreeMap<String, f64>,
    /// Knob values requested.
    pub target: BTreeMap<String, f64>,
}

impl ServerMessage {
    /// The JSON message for a session event; `None` for audio, which travels as binary frames.
    pub fn from_event(e: &demon_live::bus::Event) -> Option<Self> {
        use demon_live::bus::Event;
        Some(match e {
            Event::Audio(_) | Event::BufferReplaced { .. } => return None,
            Event::Params {
                tick,
                effective,
                target,
            } => Self::Params(Params {
                tick: *tick,
                effective: effective.clone(),
                target: target.clone(),
            }),
            Event::Stats {
                tick,
                tick_ms,
                decode_ms,
                gen_per_s,
                active_slots,
                queue,
                lead_ms,
                realtime,
                knob_to_ear,
                loudness,
                idle,
            } => Self::Stats(Stats {
                tick: *tick,
                tick_ms: *tick_ms,
                decode_ms: *decode_ms,
                gen_per_s: *gen_per_s,
                active_slots: *active_slots,
                queue: *queue,
                lead_ms: *lead_ms,
                realtime: *realtime,
                knob_to_ear: knob_to_ear.clone(),
                loudness: *loudness,
                idle: *idle,
            }),
            Event::Reflects {
                tick,
                start_sample,
                samples,
                controls,
            } => Self::Reflects(Reflects {
                tick: *tick,
                start_sample: *start_sample,
                samples: *samples,
                controls: controls.clone(),
            }),
            Event::Applied {
                tick,
                origin,
                message,
            } => Self::Applied(Applied {
                tick: *tick,
                origin: *origin,
                message: message.clone(),
            }),
            Event::Notice { message } => Self::Notice {
                message: message.clone(),
            },
        })
    }
}

// ------------------------------------------------------------------------------------- REST

/// `GET /api/health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// False while ticks fail (then `error` says why).
    pub ok: bool,
    pub backend: String,
    pub tick: u64,
    /// Why ticks fail, while they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the session file or WAV recording stopped (a failed write); the session plays on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_error: Option<String>,
    /// OSC packets dropped because their sender is outside `--osc-allow` (and not loopback).
    #[serde(default)]
    pub osc_dropped_packets: u64,
    /// OSC packets and messages that were malformed, had an unknown address or were refused
    /// by the session.
    #[serde(default)]
    pub osc_rejected_messages: u64,
    /// OSC numbers outside their range, clamped into it.
    #[serde(default)]
    pub osc_clamped_values: u64,
    /// The real-time budget: load, overload, the degrade policy's depth cap.
    pub realtime: RealtimeReport,
    /// The limits every surface enforces.
    pub limits: LimitsInfo,
}

/// The server's limits (`options::Limits`) as `/api/health` shows them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitsInfo {
    /// JSON text frames, control bodies and every HTTP body but uploads.
    pub max_text_bytes: usize,
    /// Binary frames and upload bodies.
    pub max_binary_bytes: usize,
    pub max_upload_seconds: f64,
    /// Samples over all channels of an upload (channels × rate × seconds).
    pub max_upload_samples: u64,
    /// Control messages per second per WebSocket connection.
    pub max_controls_per_second: f64,
    pub reply_timeout_ms: u64,
    /// How long an HTTP connection may take to send complete request headers (from the connect
    /// or the end of the previous response; idle keep-alive connections close after it too).
    pub header_read_timeout_ms: u64,
    /// Deltas and messages queued for one WebSocket client besides one full frame.
    pub max_client_queue_bytes: usize,
    /// The least time between two resyncs of one WebSocket client.
    pub min_resync_interval_ms: u64,
}

/// The session's weight adapters (`GET /api/loras`, MCP `list_loras`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Loras {
    /// In the model, with their strengths.
    pub adapters: Vec<demon_engine::AdapterInfo>,
    /// Every adapter of the LoRA folders, loaded or not (`--lora-dir`).
    pub library: Vec<demon_live::lora_library::LibraryEntry>,
}

/// A successful REST `POST` (`/api/control`, `/api/source`) or MCP control tool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AckBody {
    /// Always true.
    pub ok: bool,
    #[serde(flatten)]
    pub result: ControlAck,
}

/// A failed REST request (with the status of its code) or MCP tool call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always false.
    pub ok: bool,
    pub code: ErrorCode,
    pub error: String,
}

impl From<ApiError> for ErrorBody {
    fn from(e: ApiError) -> Self {
        Self {
            ok: false,
            code: e.code,
            error: e.message,
        }
    }
}

/// One knob of the catalog (`GET /api/knobs`, `ready.knobs`, MCP `list_knobs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnobInfo {
    pub name: String,
    pub min: f64,
    pub max: f64,
    pub default: f64,
    /// Integer-valued knobs round.
    pub integer: bool,
    /// Large jumps are spread over time.
    pub slewed: bool,
    pub class: PropagationClass,
    pub help: String,
}

impl From<&KnobSpec> for KnobInfo {
    fn from(k: &KnobSpec) -> Self {
        Self {
            name: k.name.to_string(),
            min: k.min,
            max: k.max,
            default: k.default,
            integer: k.integer,
            slewed: k.slewed,
            class: k.class,
            help: k.help.to_string(),
        }
    }
}

/// MCP `get_knob`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnobReading {
    pub name: String,
    /// Effective (slew-limited) value.
    pub value: f64,
    /// Requested value.
    pub target: f64,
}

/// MCP `render_offline`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenderDone {
    /// The WAV's path on the server.
    pub path: String,
}

// ----------------------------------------------------------------------- binary frames

/// What an audio frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// The whole loop, absolute values.
    Full = 0,
    /// A region, absolute values.
    Slice = 1,
    /// A region, differences to what the client holds (see `frames::Mirror`).
    Delta = 2,
}

impl FrameKind {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Full),
            1 => Some(Self::Slice),
            2 => Some(Self::Delta),
            _ => None,
        }
    }
}

/// Header bytes before the samples.
pub const HEADER_BYTES: usize = 28;

/// Bit 0 of the header's flags (bytes 2–3): the samples after the header are one zstd frame
/// (docs/protocol.md "Compressed deltas"). Only deltas, and only for a client that asked.
pub const FLAG_ZSTD: u16 = 1;

/// How a client's delta frames travel, chosen in its WebSocket upgrade (`/ws?compress=zstd`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// The f16 samples as they are.
    #[default]
    None,
    /// zstd level 1 on the samples of each delta frame.
    Zstd,
}

impl Compression {
    /// The `compress` query parameter of an upgrade (absent: none).
    pub fn from_query(query: Option<&str>) -> Result<Self, String> {
        let Some(query) = query else {
            return Ok(Self::None);
        };
        let mut found = Self::None;
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key != "compress" {
                continue;
            }
            found = match value {
                "zstd" => Self::Zstd,
                "none" | "" => Self::None,
                other => {
                    return Err(format!(
                        "compress={other} is not a compression this server speaks (zstd or none)"
                    ));
                }
            };
        }
        Ok(found)
    }
}

/// A field that does not fit the binary header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audio frame field `{field}` = {value} does not fit in 32 bits")]
pub struct FrameError {
    pub field: &'static str,
    pub value: u64,
}

/// The 28-byte little-endian header of an audio frame (docs/protocol.md "Binary audio frames").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub channels: u8,
    pub start_sample: u32,
    pub num_samples: u32,
    pub tick: u32,
    pub tick_ms: f32,
    pub decode_ms: f32,
    pub generations: u32,
}

fn fit(field: &'static str, value: u64) -> Result<u32, FrameError> {
    u32::try_from(value).map_err(|_| FrameError { field, value })
}

impl FrameHeader {
    /// A header with every 64-bit quantity checked against its 32-bit field.
    pub fn new(
        kind: FrameKind,
        start_sample: u64,
        num_samples: u64,
        tick: u64,
        tick_ms: f32,
        decode_ms: f32,
        generations: u64,
    ) -> Result<Self, FrameError> {
        Ok(Self {
            kind,
            channels: 2,
            start_sample: fit("start_sample", start_sample)?,
            num_samples: fit("num_samples", num_samples)?,
            tick: fit("tick", tick)?,
            tick_ms,
            decode_ms,
            generations: fit("generations", generations)?,
        })
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.push(self.channels);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.start_sample.to_le_bytes());
        out.extend_from_slice(&self.num_samples.to_le_bytes());
        out.extend_from_slice(&self.tick.to_le_bytes());
        out.extend_from_slice(&self.tick_ms.to_le_bytes());
        out.extend_from_slice(&self.decode_ms.to_le_bytes());
        out.extend_from_slice(&self.generations.to_le_bytes());
    }

    /// The flags (bytes 2–3: [`FLAG_ZSTD`]) of the header at the start of `b`; `None` when too
    /// short.
    pub fn flags(b: &[u8]) -> Option<u16> {
        let head = b.get(..HEADER_BYTES)?;
        Some(u16::from_le_bytes([head[2], head[3]]))
    }

    /// Sets the flags of the header at the start of `frame`; false (and nothing changed) when
    /// `frame` is shorter than a header.
    pub fn set_flags(frame: &mut [u8], flags: u16) -> bool {
        if frame.len() < HEADER_BYTES {
            return false;
        }
        frame[2..4].copy_from_slice(&flags.to_le_bytes());
        true
    }

    /// The header at the start of `b`; `None` when too short or of an unknown kind.
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        let head = b.get(..HEADER_BYTES)?;
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let f32_at =
            |i: usize| f32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        Some(FrameHeader {
            kind: FrameKind::from_byte(head[0])?,
            channels: head[1],
            start_sample: u32_at(4),
            num_samples: u32_at(8),
            tick: u32_at(12),
            tick_ms: f32_at(16),
            decode_ms: f32_at(20),
            generations: u32_at(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_comes_from_the_upgrade_query() {
        assert_eq!(Compression::from_query(None), Ok(Compression::None));
        assert_eq!(
            Compression::from_query(Some("token=t")),
            Ok(Compression::None)
        );
        assert_eq!(
            Compression::from_query(Some("token=t&compress=zstd")),
            Ok(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_query(Some("compress=none")),
            Ok(Compression::None)
        );
        let e = Compression::from_query(Some("compress=brotli")).unwrap_err();
        assert!(e.contains("compress=brotli") && e.contains("zstd"), "{e}");
    }

    #[test]
    fn header_fields_are_checked_not_truncated() {
        let h = FrameHeader::new(FrameKind::Delta, 7, 9, u32::MAX as u64, 1.5, 2.5, 3).unwrap();
        let mut b = Vec::new();
        h.write(&mut b);
        assert_eq!(b.len(), HEADER_BYTES);
        assert_eq!(FrameHeader::parse(&b), Some(h));
        let past = u32::MAX as u64 + 1;
        for (field, r) in [
            (
                "start_sample",
                FrameHeader::new(FrameKind::Slice, past, 1, 0, 0.0, 0.0, 0),
            ),
            (
                "num_samples",
                FrameHeader::new(FrameKind::Full, 0, past, 0, 0.0, 0.0, 0),
            ),
            (
                "tick",
                FrameHeader::new(FrameKind::Delta, 0, 1, past, 0.0, 0.0, 0),
            ),
            (
                "generations",
                FrameHeader::new(FrameKind::Delta, 0, 1, 0, 0.0, 0.0, past),
            ),
        ] {
            assert_eq!(r, Err(FrameError { field, value: past }));
        }
        b[0] = 9;
        assert_eq!(FrameHeader::parse(&b), None, "unknown kind");
        assert_eq!(FrameHeader::parse(&b[..27]), None, "short");
    }

    #[test]
    fn every_session_error_has_a_code_and_the_codes_are_the_documented_names() {
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), Value::from(c.as_str()));
        }
        // The session's own codes (SessionError::code) are the same strings as ours.
        for name in SessionError::CODES {
            assert!(
                ErrorCode::ALL.iter().any(|c| c.as_str() == name),
                "{name} has no protocol code"
            );
        }
        let e: ApiError = SessionError::UnknownKnob {
            name: "wobble".into(),
        }
        .into();
        assert_eq!((e.code, e.http_status()), (ErrorCode::UnknownKnob, 422));
        let e: ApiError = SessionError::Busy("queue full".into()).into();
        assert_eq!((e.code, e.http_status()), (ErrorCode::Busy, 503));
        let e: ApiError = SessionError::Timeout("no tick".into()).into();
        assert_eq!(e.http_status(), 504);
    }

    #[test]
    fn client_messages_are_told_apart_by_what_is_wrong() {
        let ok = parse_client_message(r#"{"id": 4, "type": "ping"}"#).unwrap();
        assert_eq!((ok.id, ok.request), (Value::from(4), Request::Ping));
        let code = |t: &str| parse_client_message(t).unwrap_err().1.code;
        assert_eq!(code("{nope"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"id": 1}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type": "teleport"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type": "control"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"type": "record", "action": "pause"}"#),
            ErrorCode::BadMessage
        );
        let (id, _) =
            parse_client_message(r#"{"id": "x", "type": "upload", "name": 5}"#).unwrap_err();
        assert_eq!(
            id,
            Value::from("x"),
            "the id is echoed even when the request is bad"
        );
        // Every listed type is a variant (and only those).
        for t in Request::TYPES {
            let text = match t {
                "control" => {
                    r#"{"type":"control","message":{"type":"clear_loop_band"}}"#.to_string()
                }
                "record" => r#"{"type":"record","action":"start"}"#.to_string(),
                "midi_learn" => r#"{"type":"midi_learn","knob":"denoise"}"#.to_string(),
                "heard" => r#"{"type":"heard","control":3,"ago_ms":1.5}"#.to_string(),
                "arrival" => r#"{"type":"arrival","tick":3,"sample":960}"#.to_string(),
                other => format!(r#"{{"type":"{other}"}}"#),
            };
            assert!(parse_client_message(&text).is_ok(), "{text}");
        }
    }

    /// Seeded fuzz of the WebSocket text frames (and REST bodies, which are the same control
    /// messages): valid messages with bytes flipped, cut, duplicated or spliced. Parsing never
    /// panics; a refusal always carries a code. `DEMON_FUZZ_FRAMES` raises the count (default
    /// 20 000).
    #[test]
    fn mutated_client_messages_never_panic() {
        let n: usize = std::env::var("DEMON_FUZZ_FRAMES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000);
        let seeds = [
            r#"{"id":1,"type":"set_knob","name":"guidance","value":2.5}"#,
            r#"{"id":2,"type":"set_curve","name":"ode_noise","curve":{"kind":"raw","values":[0.1,0.2]}}"#,
            r#"{"id":3,"type":"set_source","source":{"kind":"file","path":"loop.wav"}}"#,
            r#"{"id":4,"type":"upload","name":"x.wav"}"#,
            r#"{"id":5,"type":"resync"}"#,
            r#"{"id":6,"type":"set_prompt","prompt":"techno","bpm":128}"#,
            r#"{"id":7,"type":"set_knobs","values":{"guidance":2,"denoise":0.5}}"#,
        ];
        let mut x = 0x0f22_u64 ^ 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        const ALPHABET: &[u8] = b" {}[]\":,0123456789e.aZ\\";
        let mut ok = 0;
        for _ in 0..n {
            let mut b = seeds[next() as usize % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + next() % 3 {
                let i = next() as usize % b.len().max(1);
                match next() % 5 {
                    0 if !b.is_empty() => b[i] = ALPHABET[next() as usize % ALPHABET.len()],
                    1 => b.truncate(i),
                    2 if !b.is_empty() => {
                        let j = (i + next() as usize % 8).min(b.len());
                        let piece = b[i..j].to_vec();
                        b.splice(i..i, piece);
                    }
                    3 if !b.is_empty() => b[i] = next() as u8,
                    _ => b.insert(i.min(b.len()), b'"'),
                }
            }
            let text = String::from_utf8_lossy(&b);
            match parse_client_message(&text) {
                Ok(_) => ok += 1,
                Err((_, e)) => assert!(!e.message.is_empty(), "{text}"),
            }
        }
        assert!(ok > 0 && ok < n, "{ok} of {n} parsed");
    }
}
