//! Control messages, applied only between ticks. Control values go to [`Controls`] (validated
//! there, once); the conditionings are rebuilt when the prompts changed and the ring resized
//! when the depth did; sources, the loop band, seek and play act on the session itself. Every
//! message is all or nothing: on error the session is as it was.

use std::sync::atomic::Ordering;

use super::LiveCore;
use crate::control::ControlMessage;
use crate::error::{SessionError, SessionResult};
use crate::loopbuf::LoopBand;
use crate::requests::Conds;

impl LiveCore {
    /// Apply one control message between ticks. Returns the message as it should be recorded
    /// (sources resolved to latents). On error the session is unchanged.
    pub fn apply(&mut self, msg: &ControlMessage) -> SessionResult<ControlMessage> {
        let recorded = self.apply_inner(msg)?;
        self.probe.control_version.fetch_add(1, Ordering::AcqRel);
        Ok(recorded)
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
            let timbre_ref = next.source().map(|s| s.latent.clone());
            Some(Conds::prepare(
                self.backend.conditioner.as_mut(),
                &next.prompts,
                timbre_ref.as_ref(),
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
}
