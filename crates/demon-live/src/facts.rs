//! `BackendFacts`: what the runtime needs to know about a backend to turn controls into requests
//! and seconds into frames — latent geometry, the codec's hop and sample rate (hence the latent
//! frame rate), the backend's name and its adapters.
//!
//! Every conversion between seconds, latent frames and audio samples goes through these facts
//! instead of a literal 25 frames per second, so a codec with another hop or rate works as is.

use std::collections::BTreeMap;

use demon_engine::BackendSet;

use crate::error::{SessionError, SessionResult};

/// Facts about the running backend, read once from the `BackendSet`.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendFacts {
    /// The backend's name (`sketch`, `acestep`), for messages and session files.
    pub name: String,
    /// Latent channels `C` of the denoiser (and codec).
    pub latent_channels: usize,
    /// Audio samples per latent frame.
    pub hop_samples: usize,
    /// Audio sample rate of the codec, in Hz.
    pub sample_rate: u32,
    /// Ids of the weight adapters (LoRA) the denoiser can switch; `None` when it has none.
    pub adapters: Option<Vec<String>>,
    /// The trigger words of the adapters that have any (their metadata): prepended to the
    /// prompts while the adapter is enabled.
    pub adapter_triggers: BTreeMap<String, Vec<String>>,
}

impl BackendFacts {
    /// The facts of `backend` (`&mut` because listing adapters goes through the denoiser).
    pub fn of(backend: &mut BackendSet) -> Self {
        let mut facts = Self {
            name: backend.name.clone(),
            latent_channels: backend.denoiser.latent_channels(),
            hop_samples: backend.codec.hop_samples().max(1),
            sample_rate: backend.codec.sample_rate(),
            adapter_triggers: BTreeMap::new(),
            adapters: None,
        };
        facts.refresh_adapters(backend);
        facts
    }

    /// Read the adapters again (after one was installed at run time).
    pub fn refresh_adapters(&mut self, backend: &mut BackendSet) {
        let listed = backend.denoiser.adapters().map(|a| a.list());
        self.adapter_triggers = listed
            .iter()
            .flatten()
            .filter(|a| !a.metadata.trigger_words.is_empty())
            .map(|a| (a.id.clone(), a.metadata.trigger_words.clone()))
            .collect();
        self.adapters = listed.map(|l| l.into_iter().map(|x| x.id).collect());
    }

    /// Latent frames per second (`sample_rate / hop`; 25 for ACE-Step and the sketch).
    pub fn frame_rate(&self) -> f64 {
        self.sample_rate as f64 / self.hop_samples as f64
    }

    /// Latent frames in `seconds`, rounded to the nearest frame.
    pub fn frames(&self, seconds: f64) -> usize {
        (seconds * self.frame_rate()).round().max(0.0) as usize
    }

    /// Seconds in `frames` latent frames.
    pub fn seconds(&self, frames: usize) -> f64 {
        frames as f64 / self.frame_rate()
    }

    /// Milliseconds in `frames` latent frames.
    pub fn frames_ms(&self, frames: usize) -> f64 {
        self.seconds(frames) * 1000.0
    }

    /// Whether the denoiser has an adapter `id`: `not_found` when it has adapters but not this
    /// one, `unsupported_by_backend` when it has none.
    pub fn check_adapter(&self, id: &str) -> SessionResult<()> {
        match &self.adapters {
            Some(ids) if ids.iter().any(|x| x == id) => Ok(()),
            Some(_) => Err(SessionError::NotFound {
                what: "LoRA adapter".into(),
                name: id.to_string(),
            }),
            None => Err(SessionError::UnsupportedByBackend {
                backend: self.name.clone(),
                what: "LoRA adapters".into(),
            }),
        }
    }
}

/// Facts of a 64-channel backend at 48 kHz with a 1920-sample hop and one adapter, `funk`
/// (unit tests of the modules built on the facts).
#[cfg(test)]
pub(crate) fn test_facts() -> BackendFacts {
    BackendFacts {
        name: "test".into(),
        latent_channels: 64,
        hop_samples: 1920,
        sample_rate: 48_000,
        adapters: Some(vec!["funk".into()]),
        adapter_triggers: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sample_rate: u32, hop: usize) -> BackendFacts {
        BackendFacts {
            name: "x".into(),
            latent_channels: 64,
            hop_samples: hop,
            sample_rate,
            adapters: Some(vec!["funk".into()]),
            adapter_triggers: BTreeMap::new(),
        }
    }

    #[test]
    fn conversions_follow_the_codec() {
        let f = facts(48_000, 1920);
        assert_eq!(f.frame_rate(), 25.0);
        assert_eq!(f.frames(30.0), 750);
        assert_eq!(f.frames(0.36), 9);
        assert_eq!(f.seconds(750), 30.0);
        assert_eq!(f.frames_ms(1), 40.0);
        // A codec at 44.1 kHz with a 2048-sample hop runs at 21.53 frames per second.
        let g = facts(44_100, 2048);
        assert_eq!(g.frames(10.0), 215);
        assert!((g.frames_ms(1) - 46.439).abs() < 1e-3);
    }

    #[test]
    fn adapters_are_checked_by_id() {
        let f = facts(48_000, 1920);
        assert!(f.check_adapter("funk").is_ok());
        assert_eq!(f.check_adapter("polka").unwrap_err().code(), "not_found");
        let none = BackendFacts {
            adapters: None,
            ..f
        };
        assert_eq!(
            none.check_adapter("funk").unwrap_err().code(),
            "unsupported_by_backend"
        );
    }
}
