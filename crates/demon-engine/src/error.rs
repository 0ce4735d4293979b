//! Errors of the engine layer. Every variant names the offending input so a front end can show
//! it to the performer as is.

use thiserror::Error;

/// Everything that can go wrong inside `demon-engine`.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A curve was rejected (NaN, infinity, empty, bad spec text).
    #[error("invalid curve `{name}`: {reason}")]
    InvalidCurve { name: String, reason: String },

    /// A scalar parameter is outside its allowed range.
    #[error("invalid value for `{name}`: {reason}")]
    InvalidParameter { name: String, reason: String },

    /// Two tensors that must agree in shape do not.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        what: String,
        expected: String,
        got: String,
    },

    /// A backend (denoiser, codec, conditioner) failed.
    #[error("backend error: {0}")]
    Backend(String),

    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl EngineError {
    pub fn param(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            name: name.into(),
            reason: reason.into(),
        }
    }

    pub fn curve(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidCurve {
            name: name.into(),
            reason: reason.into(),
        }
    }

    pub fn shape(what: impl Into<String>, expected: impl ToString, got: impl ToString) -> Self {
        Self::Shape {
            what: what.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
