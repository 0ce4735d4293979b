//! `SessionError`: every way a live session, a render or a replay can refuse or fail, typed so
//! that front ends can tell a bad value from a busy engine.
//!
//! Each variant has a stable wire code ([`SessionError::code`]) that the WebSocket, REST and MCP
//! surfaces send to clients (`docs/protocol.md` lists them); HTTP statuses are chosen by the
//! server from the code, not from the message text.

use thiserror::Error;

/// A refusal or failure of the runtime layer.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum SessionError {
    /// A value that cannot be used: out of range, not finite, the wrong length, malformed.
    /// `what` names the field or control, `problem` says what is wrong with it.
    #[error("{what}: {problem}")]
    BadValue { what: String, problem: String },
    /// A knob name that is not in the catalog (nor a `lora:<id>` of a known adapter).
    #[error("unknown knob `{name}` (see list_knobs; LoRA strengths are `lora:<id>`)")]
    UnknownKnob { name: String },
    /// A curve name that no control understands.
    #[error("`{name}` is not a curve parameter (one of {known})")]
    UnknownCurve { name: String, known: String },
    /// The control exists but the running backend does not implement it.
    #[error("the {backend} backend does not support {what}")]
    UnsupportedByBackend { backend: String, what: String },
    /// An audio source (upload, file, library song, latent) that cannot be used.
    #[error("source `{name}`: {problem}")]
    BadSource { name: String, problem: String },
    /// An upload that could not be decoded or is over a limit.
    #[error("upload `{name}`: {problem}")]
    BadUpload { name: String, problem: String },
    /// A named thing (adapter, recording, preset) that does not exist.
    #[error("no {what} `{name}`")]
    NotFound { what: String, name: String },
    /// The session cannot take this now (queue full, recording already running, ...); trying
    /// again later can succeed.
    #[error("the session is busy: {0}")]
    Busy(String),
    /// A change that was overtaken by a later one of its kind before it could be applied
    /// (a source still being prepared when another source change came); nothing changed.
    #[error("superseded: {0}")]
    Superseded(String),
    /// No answer from the runner in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The runner has stopped; nothing more can be applied.
    #[error("the session has stopped{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Stopped(Option<String>),
    /// A file could not be read or written.
    #[error("{path}: {problem}")]
    Io { path: String, problem: String },
    /// The model or codec failed while computing (a tensor error, a backend bug).
    #[error("backend error: {0}")]
    Backend(String),
}

impl SessionError {
    /// The stable code clients see (`error.code` on the wire).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadValue { .. } => "bad_value",
            Self::UnknownKnob { .. } => "unknown_knob",
            Self::UnknownCurve { .. } => "unknown_curve",
            Self::UnsupportedByBackend { .. } => "unsupported_by_backend",
            Self::BadSource { .. } => "bad_source",
            Self::BadUpload { .. } => "bad_upload",
            Self::NotFound { .. } => "not_found",
            Self::Busy(_) => "busy",
            Self::Superseded(_) => "superseded",
            Self::Timeout(_) => "timeout",
            Self::Stopped(_) => "stopped",
            Self::Io { .. } => "io_error",
            Self::Backend(_) => "backend_error",
        }
    }

    /// Every code [`code`](Self::code) can return (for docs and protocol tests).
    pub const CODES: [&'static str; 13] = [
        "bad_value",
        "unknown_knob",
        "unknown_curve",
        "unsupported_by_backend",
        "bad_source",
        "bad_upload",
        "not_found",
        "busy",
        "superseded",
        "timeout",
        "stopped",
        "io_error",
        "backend_error",
    ];

    /// A bad value of a named field or control.
    pub fn bad_value(what: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::BadValue {
            what: what.into(),
            problem: problem.into(),
        }
    }

    /// A source that cannot be used.
    pub fn bad_source(name: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        Self::BadSource {
            name: name.into(),
            problem: problem.to_string(),
        }
    }

    /// A file that cannot be read or written.
    pub fn io(path: &std::path::Path, problem: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            problem: problem.to_string(),
        }
    }

    /// A failure inside the model or codec.
    pub fn backend(e: impl std::fmt::Display) -> Self {
        Self::Backend(e.to_string())
    }
}

impl From<candle_core::Error> for SessionError {
    fn from(e: candle_core::Error) -> Self {
        Self::Backend(e.to_string())
    }
}

impl From<demon_engine::EngineError> for SessionError {
    /// The engine's parameter and curve refusals are bad values (the message names the field);
    /// shape, tensor and backend failures are backend errors.
    fn from(e: demon_engine::EngineError) -> Self {
        use demon_engine::EngineError as E;
        match e {
            E::InvalidCurve { name, reason } => Self::BadValue {
                what: format!("invalid curve `{name}`"),
                problem: reason,
            },
            E::InvalidParameter { name, reason } => Self::BadValue {
                what: format!("invalid value for `{name}`"),
                problem: reason,
            },
            other => Self::Backend(other.to_string()),
        }
    }
}

impl SessionError {
    /// An engine error met while doing `what`: refusals stay bad values (prefixed with `what`),
    /// failures become backend errors.
    pub fn engine(what: &str, e: demon_engine::EngineError) -> Self {
        match Self::from(e) {
            Self::BadValue { what: w, problem } => Self::BadValue {
                what: format!("{what}: {w}"),
                problem,
            },
            Self::Backend(m) => Self::Backend(format!("{what}: {m}")),
            other => other,
        }
    }
}

/// Results of the runtime layer.
pub type SessionResult<T> = std::result::Result<T, SessionError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_listed_code_and_a_message_naming_the_problem() {
        let all = [
            SessionError::bad_value("knob `denoise`", "1.5 is outside [0, 1]"),
            SessionError::UnknownKnob {
                name: "wobble".into(),
            },
            SessionError::UnknownCurve {
                name: "x".into(),
                known: "blend".into(),
            },
            SessionError::UnsupportedByBackend {
                backend: "sketch".into(),
                what: "LoRA adapters".into(),
            },
            SessionError::bad_source("a.wav", "shorter than one latent frame"),
            SessionError::BadUpload {
                name: "u".into(),
                problem: "not audio".into(),
            },
            SessionError::NotFound {
                what: "LoRA adapter".into(),
                name: "funk".into(),
            },
            SessionError::Busy("too many pending controls".into()),
            SessionError::Superseded("a later source change came first".into()),
            SessionError::Timeout("no tick in 10 s".into()),
            SessionError::Stopped(None),
            SessionError::io(std::path::Path::new("/x"), "permission denied"),
            SessionError::backend("shape mismatch"),
        ];
        let codes: Vec<&str> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes, SessionError::CODES);
        assert_eq!(all[0].to_string(), "knob `denoise`: 1.5 is outside [0, 1]");
        assert_eq!(all[10].to_string(), "the session has stopped");
        assert_eq!(
            SessionError::Stopped(Some("disk full".into())).to_string(),
            "the session has stopped: disk full"
        );
    }
}
