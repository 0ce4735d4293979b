//! Sources: a `SourceSpec` decoded into the latent the session generates from. Audio is
//! encoded by the codec; a latent arrives as base64 of little-endian f32 `[frames][channels]`
//! (the session-file form, so replays never depend on files). Library songs and files are
//! resolved by the front end before they reach the session (`crate::resolve`).
//!
//! A source change is two steps: [`prepare_source`] (encode, decode the loop: the costly part,
//! which a live session runs on a fork of the codec beside its ticks) and applying the
//! prepared source between two ticks (cheap).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use candle_core::Tensor;

use demon_engine::Codec;

use super::{LiveCore, latent_spec};
use crate::analysis::SourceAnalysis;
use crate::control::{ReferenceRole, SourceSpec};
use crate::controls::Controls;
use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;
use crate::requests::Conds;

/// The longest timbre or structure reference (DEMON records references of up to a minute; a
/// reference is encoded between two ticks, so it must stay short).
pub const MAX_REFERENCE_SECONDS: f64 = 60.0;

/// A source made ready to apply: its latent `[1, T, C]` and the codec's audio of it (the
/// loop the song starts as). Making one is the costly part of a source change (a 20-minute
/// source takes the sketch codec about a minute); applying one is cheap.
pub struct PreparedSource {
    name: String,
    latent: Tensor,
    audio: demon_engine::Audio,
    analysis: SourceAnalysis,
}

impl PreparedSource {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Latent frames of the source: the song's length once it is applied.
    pub fn frames(&self) -> usize {
        self.latent.dims().get(1).copied().unwrap_or(0)
    }
}

/// Encode (audio) or check (latent) a source spec, decode the loop it starts as and analyse
/// it ([`SourceAnalysis`]), with
/// `codec`: the session's own, or a fork of it working beside the tick loop. `None` for
/// `SourceSpec::None`. Touches no session state.
pub fn prepare_source(
    spec: &SourceSpec,
    facts: &BackendFacts,
    codec: &mut dyn Codec,
) -> SessionResult<Option<PreparedSource>> {
    let Some((name, latent)) = source_latent(spec, facts, codec)? else {
        return Ok(None);
    };
    let audio = codec
        .decode(&latent, 0)
        .map_err(|e| SessionError::bad_source(name.clone(), e))?;
    // Measured on what the latent decodes to, so a replay (which has only the latent)
    // measures, and conditions, the same.
    let analysis = SourceAnalysis::of(&audio);
    Ok(Some(PreparedSource {
        name,
        latent,
        audio,
        analysis,
    }))
}

/// The latent `[1, T, C]` of a source spec, checked against the backend; `None` for
/// `SourceSpec::None`.
fn source_latent(
    spec: &SourceSpec,
    facts: &BackendFacts,
    codec: &mut dyn Codec,
) -> SessionResult<Option<(String, Tensor)>> {
    let max_frames = facts.frames(crate::render::MAX_SECONDS);
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
            let audio = demon_engine::Audio::new(facts.sample_rate, channels.clone())
                .map_err(|e| SessionError::bad_source(name.clone(), e))?;
            if audio.frames() < facts.hop_samples {
                return Err(SessionError::bad_source(
                    name.clone(),
                    "shorter than one latent frame",
                ));
            }
            let latent = codec
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
            let c = facts.latent_channels;
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
            let device = codec.device().clone();
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

impl LiveCore {
    /// Make a source spec the session's source (or remove it), prepared here with the
    /// session's codec. Returns the spec as recorded (a latent). On error nothing changes.
    pub(super) fn set_source(&mut self, spec: &SourceSpec) -> SessionResult<SourceSpec> {
        let prepared = prepare_source(spec, &self.facts, self.backend.codec.as_mut())?;
        self.apply_prepared_source(prepared)
    }

    /// A fork of the session's codec for preparing sources beside the tick loop, when the
    /// backend can make one cheaply.
    pub fn fork_codec(&self) -> Option<Box<dyn Codec>> {
        self.backend.codec.fork()
    }

    /// Make a prepared source the session's source (`None`: remove it): the song takes the
    /// source's length and the loop starts as the source's own audio. Returns the spec as
    /// recorded (a latent). On error nothing changes.
    pub(super) fn apply_prepared_source(
        &mut self,
        prepared: Option<PreparedSource>,
    ) -> SessionResult<SourceSpec> {
        self.apply_prepared_with(self.controls.clone(), prepared)
    }

    /// Make `next` the controls with the conditionings of its prompts and timbre reference
    /// (or source); nothing changes when conditioning fails.
    pub(super) fn commit_conditioned(&mut self, next: Controls) -> SessionResult<()> {
        self.conds = Conds::prepare(
            self.backend.conditioner.as_mut(),
            &next.conditioning_prompts(),
            next.timbre_latent(),
        )?;
        self.controls = next;
        Ok(())
    }

    /// Make `spec` the reference of `role` (encoded here, between two ticks: references are
    /// short clips) or clear it; a timbre reference conditions the prompts again. Returns the
    /// reference as recorded (a latent, or `none`). On error nothing changes.
    pub(super) fn set_reference(
        &mut self,
        role: ReferenceRole,
        spec: &SourceSpec,
    ) -> SessionResult<SourceSpec> {
        let mut next = self.controls.clone();
        let recorded = self.prepare_reference(&mut next, role, spec)?;
        if role == ReferenceRole::Timbre {
            self.commit_conditioned(next)?;
        } else {
            self.controls = next;
        }
        Ok(recorded)
    }

    /// Encode `spec` (at most [`MAX_REFERENCE_SECONDS`]) and make it `role`'s reference in
    /// `next`, which the caller commits; returns the reference as recorded (a latent, or
    /// `none`). The session itself is not changed.
    pub(super) fn prepare_reference(
        &mut self,
        next: &mut Controls,
        role: ReferenceRole,
        spec: &SourceSpec,
    ) -> SessionResult<SourceSpec> {
        let latent = source_latent(spec, &self.facts, self.backend.codec.as_mut())?;
        if let Some((name, l)) = &latent
            && l.dim(1)? > self.facts.frames(MAX_REFERENCE_SECONDS) + 1
        {
            return Err(SessionError::bad_source(
                name.clone(),
                format!(
                    "a {role} reference is at most {MAX_REFERENCE_SECONDS} s long",
                    role = role.name()
                ),
            ));
        }
        let recorded = match &latent {
            Some((name, l)) => latent_spec(name, l)?,
            None => SourceSpec::None,
        };
        next.set_reference(role, latent);
        Ok(recorded)
    }

    /// [`apply_prepared_source`](Self::apply_prepared_source) with `next` (checked) as the
    /// controls it starts from (a preset loads its values and its source together). On error
    /// nothing changes.
    pub(super) fn apply_prepared_with(
        &mut self,
        mut next: Controls,
        prepared: Option<PreparedSource>,
    ) -> SessionResult<SourceSpec> {
        let (decoded, audio, analysis) = match prepared {
            Some(p) => (Some((p.name, p.latent)), Some(p.audio), Some(p.analysis)),
            None => (None, None, None),
        };
        next.set_source(decoded.clone());
        next.set_source_analysis(analysis);
        self.commit_conditioned(next)?;
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
