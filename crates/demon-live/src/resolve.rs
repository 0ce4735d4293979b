//! Sources as users name them — an audio file, or `library:STYLE[:N]`, a song of the backend's
//! own library — turned into what a render or a session takes. One resolver serves every
//! front end (`demon render`, `perform`, `serve`, the server's upload and MCP hooks); the
//! backend layer provides its library, if it has one ([`SongLibrary`]), so no front end asks
//! which backend it runs.
//!
//! A WAV written by `demon` carries the exact latent it was decoded from; when it belongs to
//! this backend it is used as is, so a render used again as a source is bit-exact.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use demon_audio::LoadLimits;
use demon_engine::{Codec, Prompt};

use crate::control::SourceSpec;
use crate::core::latent_spec;
use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;

/// What a backend offers beyond its model: songs of its own (the sketch composes them) and the
/// tempo it reads from a prompt.
pub trait SongLibrary: Send + Sync {
    /// Source names a UI can offer, `library:STYLE:N`.
    fn names(&self) -> Vec<String>;
    /// The latent `[1, frames, C]` of song `index` of `style`, at the tempo and key `prompt`
    /// asks for. Unknown styles are `bad_source` errors naming the known ones.
    fn song(
        &self,
        style: &str,
        index: u64,
        prompt: &Prompt,
        frames: usize,
        device: &Device,
    ) -> SessionResult<Tensor>;
    /// The tempo this backend reads from `prompt` (its bpm, or what its text implies), so a
    /// second prompt can play at the same tempo.
    fn tempo(&self, prompt: &Prompt) -> Option<f32>;
}

/// Resolves source names for one backend.
#[derive(Clone)]
pub struct SourceResolver {
    facts: BackendFacts,
    device: Device,
    library: Option<Arc<dyn SongLibrary>>,
}

/// `library:STYLE[:N]` as (style, N), or `None` when `spec` does not name a library song.
fn parse_library(spec: &str) -> Option<SessionResult<(String, u64)>> {
    let rest = spec.strip_prefix("library:")?;
    let mut parts = rest.split(':');
    let style = parts.next().unwrap_or("").to_string();
    Some(match parts.next() {
        None => Ok((style, 0)),
        Some(n) => n.parse().map(|i| (style, i)).map_err(|_| {
            SessionError::bad_source(spec, format!("library song number `{n}` is not a number"))
        }),
    })
}

impl SourceResolver {
    pub fn new(facts: BackendFacts, device: Device, library: Option<Arc<dyn SongLibrary>>) -> Self {
        Self {
            facts,
            device,
            library,
        }
    }

    /// The backend's song library, if it has one.
    pub fn library(&self) -> Option<&dyn SongLibrary> {
        self.library.as_deref()
    }

    /// Library song names a UI can offer (none without a library).
    pub fn library_names(&self) -> Vec<String> {
        self.library.as_ref().map(|l| l.names()).unwrap_or_default()
    }

    /// The tempo the backend reads from `prompt`: its bpm, else what the library reads.
    pub fn tempo(&self, prompt: &Prompt) -> Option<f32> {
        prompt
            .bpm
            .or_else(|| self.library.as_ref().and_then(|l| l.tempo(prompt)))
    }

    fn library_song(
        &self,
        spec: &str,
        style: &str,
        index: u64,
        prompt: &Prompt,
        frames: usize,
    ) -> SessionResult<Tensor> {
        match &self.library {
            Some(l) => l.song(style, index, prompt, frames, &self.device),
            None => Err(SessionError::UnsupportedByBackend {
                backend: self.facts.name.clone(),
                what: format!("library sources (`{spec}`)"),
            }),
        }
    }

    /// The exact latent a WAV written by `demon` for this backend carries, if any.
    fn embedded_latent(&self, path: &Path) -> SessionResult<Option<Tensor>> {
        let Ok(Some(l)) = demon_audio::read_embedded_latent(path) else {
            return Ok(None);
        };
        if l.backend != self.facts.name || l.channels != self.facts.latent_channels || l.frames == 0
        {
            return Ok(None);
        }
        Ok(Some(Tensor::from_vec(
            l.values,
            (1, l.frames, l.channels),
            &self.device,
        )?))
    }

    fn decode_file(&self, spec: &str) -> SessionResult<demon_engine::Audio> {
        demon_audio::load_file_stereo(
            Path::new(spec),
            LoadLimits::default(),
            self.facts.sample_rate,
        )
        .map_err(|e| SessionError::bad_source(spec, e))
    }

    /// A source latent `[1, T, C]`: a library song composed at `frames`, the exact latent of
    /// a `demon` WAV, or any audio file encoded by `codec`.
    pub fn latent(
        &self,
        spec: &str,
        prompt: &Prompt,
        frames: usize,
        codec: &mut dyn Codec,
    ) -> SessionResult<Tensor> {
        if let Some(lib) = parse_library(spec) {
            let (style, index) = lib?;
            return self.library_song(spec, &style, index, prompt, frames);
        }
        if let Some(t) = self.embedded_latent(Path::new(spec))? {
            return Ok(t);
        }
        let audio = self.decode_file(spec)?;
        codec
            .encode(&audio)
            .map_err(|e| SessionError::bad_source(spec, format!("encoding it: {e}")))
    }

    /// A source for a running session, without the model: library songs and `demon` WAVs as
    /// latents, other files as audio (the runner encodes them).
    pub fn spec(&self, spec: &str, prompt: &Prompt, frames: usize) -> SessionResult<SourceSpec> {
        if let Some(lib) = parse_library(spec) {
            let (style, index) = lib?;
            let t = self.library_song(spec, &style, index, prompt, frames)?;
            return latent_spec(spec, &t);
        }
        if let Some(t) = self.embedded_latent(Path::new(spec))? {
            return latent_spec(spec, &t);
        }
        let audio = self.decode_file(spec)?;
        Ok(SourceSpec::Audio {
            name: spec.to_string(),
            channels: audio.channels,
        })
    }

    /// A source spec resolved with the model at hand: files and library songs become latents
    /// (scripts and session starts record latents, never paths).
    pub fn latent_spec(
        &self,
        spec: &str,
        prompt: &Prompt,
        frames: usize,
        codec: &mut dyn Codec,
    ) -> SessionResult<SourceSpec> {
        let t = self.latent(spec, prompt, frames, codec)?;
        latent_spec(spec, &t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names_parse() {
        assert_eq!(parse_library("x.wav").map(|r| r.is_ok()), None);
        assert_eq!(
            parse_library("library:hip_hop:3").unwrap().unwrap(),
            ("hip_hop".to_string(), 3)
        );
        assert_eq!(
            parse_library("library:funk").unwrap().unwrap(),
            ("funk".to_string(), 0)
        );
        let e = parse_library("library:funk:x").unwrap().unwrap_err();
        assert_eq!(e.code(), "bad_source");
        assert!(e.to_string().contains("is not a number"), "{e}");
    }
}
