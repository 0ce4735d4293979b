//! Sources: a `SourceSpec` decoded into the latent the session generates from. Audio is
//! encoded by the codec; a latent arrives as base64 of little-endian f32 `[frames][channels]`
//! (the session-file form, so replays never depend on files). Library songs and files are
//! resolved by the front end before they reach the session (`crate::resolve`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use candle_core::Tensor;

use super::{LiveCore, latent_spec};
use crate::control::SourceSpec;
use crate::error::{SessionError, SessionResult};
use crate::requests::Conds;

impl LiveCore {
    /// The latent `[1, T, C]` of a source spec, checked against the backend; `None` for
    /// `SourceSpec::None`. Changes nothing.
    fn decode_source(&mut self, spec: &SourceSpec) -> SessionResult<Option<(String, Tensor)>> {
        let max_frames = self.facts.frames(crate::render::MAX_SECONDS);
        let (name, latent) = match spec {
            SourceSpec::None => return Ok(None),
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
                let audio = demon_engine::Audio::new(self.facts.sample_rate, channels.clone())
                    .map_err(|e| SessionError::bad_source(name.clone(), e))?;
                if audio.frames() < self.facts.hop_samples {
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
                let c = self.facts.latent_channels;
                if *channels != c {
                    return Err(SessionError::bad_source(
                        name.clone(),
                        format!("has {channels} latent channels; this backend uses {c}"),
                    ));
                }
                if *frames == 0 || *frames > max_frames {
                    return Err(SessionError::bad_source(
                        name.clone(),
                        format!("{frames} frames is not a usable length"),
                    ));
                }
                let bytes = BASE64.decode(data_b64.trim()).map_err(|e| {
                    SessionError::bad_source(name.clone(), format!("invalid base64: {e}"))
                })?;
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
                let device = self.backend.codec.device().clone();
                (
                    name.clone(),
                    Tensor::from_vec(v, (1, *frames, *channels), &device)?,
                )
            }
        };
        if latent.dim(1)? > max_frames {
            return Err(SessionError::bad_source(
                name,
                format!("longer than {} s", crate::render::MAX_SECONDS),
            ));
        }
        Ok(Some((name, latent)))
    }

    /// Make a source spec the session's source (or remove it): the song takes the source's
    /// length and the loop starts as the source's own audio. Returns the spec as recorded (a
    /// latent). On error nothing changes.
    pub(super) fn set_source(&mut self, spec: &SourceSpec) -> SessionResult<SourceSpec> {
        let decoded = self.decode_source(spec)?;
        let audio = match &decoded {
            Some((name, latent)) => Some(
                self.backend
                    .codec
                    .decode(latent, 0)
                    .map_err(|e| SessionError::bad_source(name.clone(), e))?,
            ),
            None => None,
        };
        let mut next = self.controls.clone();
        next.set_source(decoded.clone());
        let conds = Conds::prepare(
            self.backend.conditioner.as_mut(),
            &next.prompts,
            next.source().map(|s| &s.latent),
        )?;
        self.controls = next;
        self.conds = conds;
        let Some((name, latent)) = decoded else {
            self.resize_song(self.facts.frames(self.cfg.song_seconds))?;
            return Ok(SourceSpec::None);
        };
        self.resize_song(latent.dim(1)?)?;
        if let Some(audio) = audio {
            let mut ch = audio.channels.into_iter();
            let (l, r) = (ch.next().unwrap_or_default(), ch.next().unwrap_or_default());
            let r = if r.is_empty() { l.clone() } else { r };
            self.playback.replace_all([l, r], 0);
        }
        latent_spec(&name, &latent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latents_round_trip_through_base64() {
        let d = candle_core::Device::Cpu;
        let v: Vec<f32> = (0..30).map(|i| i as f32 * 0.37 - 4.0).collect();
        let t = Tensor::from_vec(v.clone(), (1, 10, 3), &d).unwrap();
        let SourceSpec::Latent {
            frames,
            channels,
            data_b64,
            ..
        } = latent_spec("x", &t).unwrap()
        else {
            panic!("not a latent spec")
        };
        assert_eq!((frames, channels), (10, 3));
        let bytes = BASE64.decode(data_b64).unwrap();
        let back: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(back, v);
    }
}
