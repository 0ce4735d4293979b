//! Control messages, applied only between ticks. Control values go to [`Controls`] (validated
//! there, once); the conditionings are rebuilt when the prompts changed and the ring resized
//! when the depth did; sources, the loop band, seek and play act on the session itself. Every
//! message is all or nothing: on error the session is as it was.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::LiveCore;
use crate::control::{ControlMessage, ReferenceRole, SourceSpec};
use crate::error::{SessionError, SessionResult};
use crate::loopbuf::LoopBand;
use crate::preset::Preset;
use crate::requests::Conds;

impl LiveCore {
    /// Apply one control message between ticks. Returns the message as it should be recorded
    /// (sources resolved to latents). On error the session is unchanged.
    pub fn apply(&mut self, msg: &ControlMessage) -> SessionResult<ControlMessage> {
        let recorded = self.apply_inner(msg)?;
        self.probe.control_version.fetch_add(1, Ordering::AcqRel);
        self.last_activity_tick = self.tick;
        Ok(recorded)
    }

    /// Apply a source prepared beside the tick loop (`sources::prepare_source`), as the
    /// `set_source` control it came from; returns that control as recorded (with the latent).
    pub fn apply_prepared(
        &mut self,
        prepared: Option<super::sources::PreparedSource>,
    ) -> SessionResult<ControlMessage> {
        let source = self.apply_prepared_source(prepared)?;
        self.probe.control_version.fetch_add(1, Ordering::AcqRel);
        self.last_activity_tick = self.tick;
        Ok(ControlMessage::SetSource { source })
    }

    /// Whether `apply` would accept this knob value, without applying it (knob sets coalescing
    /// at a tick boundary are checked one by one, and only the last is applied).
    pub fn check_knob(&self, msg: &ControlMessage) -> SessionResult<()> {
        match msg {
            ControlMessage::SetKnob { .. } => {
                self.controls.clone().apply(msg, &self.facts).map(|_| ())
            }
            _ => Err(SessionError::bad_value(
                "check_knob",
                "only a set_knob message is checked alone",
            )),
        }
    }

    fn apply_inner(&mut self, msg: &ControlMessage) -> SessionResult<ControlMessage> {
        let sr = self.facts.sample_rate as f64;
        match msg {
            ControlMessage::SetSource { source } => {
                let resolved = self.set_source(source)?;
                return Ok(ControlMessage::SetSource { source: resolved });
            }
            ControlMessage::SetReference { role, source } => {
                let recorded = self.set_reference(*role, source)?;
                return Ok(ControlMessage::SetReference {
                    role: *role,
                    source: recorded,
                });
            }
            ControlMessage::LoadPreset {
                preset,
                source,
                references,
            } => {
                return self.load_preset(preset, source.as_ref(), references);
            }
            ControlMessage::SetLoopBand { start_s, end_s } => {
                if !(start_s.is_finite() && end_s.is_finite() && *start_s >= 0.0) {
                    return Err(SessionError::bad_value(
                        "loop band",
                        format!("[{start_s}, {end_s}] s is not a range of times"),
                    ));
                }
                let band = LoopBand {
                    start: (start_s * sr).round() as usize,
                    end: (end_s * sr).round() as usize,
                };
                self.playback.buffer.set_band(Some(band))?;
            }
            ControlMessage::ClearLoopBand => self.playback.buffer.set_band(None)?,
            ControlMessage::Seek { seconds } => {
                if !(seconds.is_finite() && *seconds >= 0.0) {
                    return Err(SessionError::bad_value(
                        "seek",
                        format!("{seconds} s is not a time"),
                    ));
                }
                self.playback.buffer.seek((seconds * sr).round() as usize)?;
            }
            ControlMessage::SetPlaying { playing } => self.playback.playing = *playing,
            // Read here, on this thread: a replay or a script installs what a live session read
            // beside the ticks (`session` installs through `install_adapter` itself).
            ControlMessage::InstallLora { id, path, metadata } => {
                let files =
                    self.adapter_files()
                        .ok_or_else(|| SessionError::UnsupportedByBackend {
                            backend: self.facts.name.clone(),
                            what: "LoRA adapters loaded at run time".into(),
                        })?;
                let path = std::path::Path::new(path);
                let loaded = files
                    .load(path)
                    .map_err(|e| SessionError::bad_value(format!("LoRA `{id}`"), e.to_string()))?;
                return self.install_adapter(id, path, metadata.clone(), loaded);
            }
            control => self.apply_control(control)?,
        }
        Ok(msg.clone())
    }

    /// A control value: checked by `Controls` on a copy, committed only when the backend work
    /// it needs (conditioning new prompts, resizing the ring) succeeded.
    fn apply_control(&mut self, msg: &ControlMessage) -> SessionResult<()> {
        let mut next = self.controls.clone();
        let changed = next.apply(msg, &self.facts)?;
        let conds = if changed.prompts {
            Some(Conds::prepare(
                self.backend.conditioner.as_mut(),
                &next.conditioning_prompts(),
                next.timbre_latent(),
            )?)
        } else {
            None
        };
        if let Some(depth) = changed.depth {
            // A degrade cap (real time, `crate::budget`) holds the ring under it.
            self.pipeline
                .set_depth(self.depth_cap.map_or(depth, |c| c.min(depth)))?;
        }
        self.controls = next;
        if let Some(c) = conds {
            self.conds = c;
        }
        Ok(())
    }

    /// Load a preset, all or nothing: every value is checked (by `Controls`, as any control),
    /// the source decoded, the curves evaluated at the new song's window and the loop band
    /// checked against the new song before anything changes. Returns the message as recorded
    /// (the source and the references as latents).
    pub(super) fn load_preset(
        &mut self,
        preset: &Preset,
        source: Option<&SourceSpec>,
        references: &BTreeMap<ReferenceRole, SourceSpec>,
    ) -> SessionResult<ControlMessage> {
        let mut next = self.controls.clone();
        preset.apply_to(&mut next, &self.facts)?;
        let mut recorded_references = BTreeMap::new();
        for (role, spec) in references {
            let recorded = self
                .prepare_reference(&mut next, *role, spec)
                .map_err(|e| {
                    SessionError::bad_value(
                        format!("preset field `references.{}`", role.name()),
                        e.to_string(),
                    )
                })?;
            recorded_references.insert(*role, recorded);
        }
        // Prepared here, on the tick thread: a preset's source is not prepared beside the
        // ticks as a `set_source` is (`session`), so a long one holds the ticks while it encodes.
        let prepared = source
            .map(|s| super::sources::prepare_source(s, &self.facts, self.backend.codec.as_mut()))
            .transpose()?;
        let song_frames = match &prepared {
            None => self.song.frames,
            Some(None) => self.facts.frames(self.cfg.song_seconds),
            Some(Some(p)) => p.frames(),
        };
        next.set_frames(self.window_for(song_frames))
            .map_err(|e| SessionError::bad_value("preset field `curves`", e.to_string()))?;
        let sr = self.facts.sample_rate as f64;
        let band = preset.checked_loop_band()?.map(|(s, e)| LoopBand {
            start: (s * sr).round() as usize,
            end: (e * sr).round() as usize,
        });
        let song_samples = song_frames * self.facts.hop_samples;
        if let Some(b) = band
            && (b.start >= b.end || b.end > song_samples)
        {
            return Err(SessionError::bad_value(
                "preset field `loop_band`",
                format!(
                    "[{}, {}) samples is empty or beyond the song ({song_samples} samples)",
                    b.start, b.end
                ),
            ));
        }
        let depth = next.depth();
        let recorded = match prepared {
            // All or nothing: the controls and the source are committed together, or not.
            Some(p) => Some(self.apply_prepared_with(next, p)?),
            None => {
                self.commit_conditioned(next)?;
                None
            }
        };
        // Checked against the catalog's range, so the ring takes it.
        self.pipeline
            .set_depth(self.depth_cap.map_or(depth, |c| c.min(depth)))?;
        self.playback.buffer.set_band(band)?;
        Ok(ControlMessage::LoadPreset {
            preset: Box::new(preset.clone()),
            source: recorded,
            references: recorded_references,
        })
    }
}
