//! Offline rendering: N takes of one song, in flight together in the ring.
//!
//! This is not a separate batch path: a render holds the same [`Controls`] a live session
//! holds, builds its requests with the same builder ([`crate::requests`]) and submits them to a
//! `StreamPipeline` exactly as the live session does, so what a render produces is what the
//! instrument plays. Because the pipeline is bit-identical across depths, `--depth 1` and
//! `--depth 8` give the same files.

use std::collections::VecDeque;

use candle_core::Tensor;
use demon_engine::{Audio, BackendSet, Prompt, SharedLane, SlotRequest, StreamPipeline};

use crate::control::ControlMessage;
use crate::controls::{Controls, CurveId, Knob};
use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;
use crate::requests::{self, Conds, Inputs};

/// Longest song a render accepts, in seconds.
pub const MAX_SECONDS: f64 = 1200.0;
/// Most takes in one render.
pub const MAX_TAKES: usize = 256;

/// Everything that determines a render: the controls (their source is the render's source),
/// the song length and how many takes (seeds `seed..seed + takes − 1`).
#[derive(Clone, Debug)]
pub struct RenderSpec {
    pub controls: Controls,
    /// Latent frames of the song.
    pub frames: usize,
    pub takes: usize,
}

impl RenderSpec {
    /// One take of `frames` latent frames with the catalog's defaults. A render has no time
    /// for a knob to travel, so slew limiting is off: every knob set is the value rendered.
    pub fn new(prompt: Prompt, frames: usize) -> Self {
        let mut controls = Controls::new(prompt, frames);
        controls.set_slew_off();
        Self {
            controls,
            frames,
            takes: 1,
        }
    }

    /// Apply one control message to the render's controls, through the same
    /// [`Controls::apply`] a live session's controls go through (so a render's control list
    /// and a live take of the same messages hold the same `Controls`). Sources, the loop band,
    /// seek and play are refused: a render's source is [`Controls::set_source`].
    pub fn apply(&mut self, msg: &ControlMessage, facts: &BackendFacts) -> SessionResult<()> {
        self.controls.apply(msg, facts).map(|_| ())
    }

    /// Reject renders that cannot be made, or whose controls would do nothing offline, before
    /// any work starts.
    pub fn validate(&self, facts: &BackendFacts) -> SessionResult<()> {
        self.check_shape(facts)?;
        self.check_controls_act(facts)
    }

    /// The song length, the takes and the source's shape.
    fn check_shape(&self, facts: &BackendFacts) -> SessionResult<()> {
        if self.frames == 0 {
            return Err(SessionError::bad_value(
                "song length",
                "the song length is zero: give --seconds greater than 0",
            ));
        }
        let seconds = facts.seconds(self.frames);
        if seconds > MAX_SECONDS {
            return Err(SessionError::bad_value(
                "song length",
                format!("{seconds:.0} s is longer than the {MAX_SECONDS:.0} s limit"),
            ));
        }
        if self.takes == 0 || self.takes > MAX_TAKES {
            return Err(SessionError::bad_value(
                "takes",
                format!("takes must be in 1..={MAX_TAKES}, got {}", self.takes),
            ));
        }
        if let Some(s) = self.controls.source() {
            let want = [1, self.frames, facts.latent_channels];
            if s.latent.dims() != want {
                return Err(SessionError::bad_source(
                    s.name.clone(),
                    format!("latent {:?} where {want:?} was expected", s.latent.dims()),
                ));
            }
        }
        Ok(())
    }

    /// Controls that act in live play but would do nothing in this render (a negative prompt
    /// without guidance, a blend without a second prompt, the source's controls without a
    /// source) are refused, so a render never silently ignores a flag.
    fn check_controls_act(&self, facts: &BackendFacts) -> SessionResult<()> {
        let c = &self.controls;
        if let Some(knob) = c.lanes().keys().next() {
            return Err(SessionError::bad_value(
                format!("automation lane of `{knob}`"),
                "a lane follows a live session's playhead, and a render has none: draw a curve, or play the lane live and record it",
            ));
        }
        let source = c.source();
        let lane = requests::build_lane(c, facts)?;
        if c.prompts.negative.is_some() && lane.curves.guidance.is_none() {
            return Err(SessionError::bad_value(
                "negative prompt",
                "a negative prompt only acts with guidance: add --guidance (for example 3)",
            ));
        }
        if c.prompts.b.is_none() && (c.knobs().blend > 0.0 || c.curve(CurveId::Blend).is_some()) {
            return Err(SessionError::bad_value(
                "blend",
                "a blend needs a second prompt (--prompt-b)",
            ));
        }
        if source.is_none() {
            if c.knobs().x0_target_strength > 0.0 || c.curve(CurveId::X0TargetStrength).is_some() {
                return Err(SessionError::bad_value(
                    Knob::X0TargetStrength.name(),
                    "pulls toward an x0 target, and a render's target is its source: add --source",
                ));
            }
            if let Some((id, _)) = c.curves().find(|(id, _)| id.needs_source()) {
                return Err(SessionError::bad_value(
                    format!("curve `{}`", id.name()),
                    format!("the `{}` curve needs a source (--source)", id.name()),
                ));
            }
        }
        Ok(())
    }
}

/// One finished take.
pub struct RenderedTake {
    pub seed: u64,
    /// `[1, T, C]`.
    pub latent: Tensor,
    pub audio: Audio,
}

/// Measure the source of `controls`, unless it was measured already: as a live session does,
/// on what its latent decodes to, so its tempo and key condition a render as they condition
/// the live loop.
pub fn analyse_source(
    codec: &mut dyn demon_engine::Codec,
    controls: &mut Controls,
) -> SessionResult<()> {
    if let Some(src) = controls.source()
        && controls.source_analysis().is_none()
    {
        let audio = codec.decode(&src.latent, 0)?;
        controls.set_source_analysis(Some(crate::analysis::SourceAnalysis::of(&audio)));
    }
    Ok(())
}

/// The requests (one per take) and the shared lane of a render, from the one builder.
pub fn plan(
    backend: &mut BackendSet,
    spec: &RenderSpec,
) -> SessionResult<(Vec<SlotRequest>, SharedLane)> {
    let facts = BackendFacts::of(backend);
    spec.check_shape(&facts)?;
    let frames = spec.frames;
    let mut controls = spec.controls.clone();
    controls.set_frames(frames)?;
    analyse_source(backend.codec.as_mut(), &mut controls)?;
    // Timbre conditionings cost a pass of the timbre encoder: only when they act.
    let timbre_ref = controls
        .timbre_latent()
        .filter(|_| controls.knobs().timbre as f32 > 0.001)
        .cloned();
    let conds = Conds::prepare(
        backend.conditioner.as_mut(),
        &controls.conditioning_prompts(),
        timbre_ref.as_ref(),
    )?;
    let context = requests::structure_context(backend.conditioner.as_mut(), &controls, 0, frames)?;
    let history = VecDeque::new();
    let mut lane = None;
    let mut requests = Vec::with_capacity(spec.takes);
    for k in 0..spec.takes as u64 {
        let (r, l) = requests::build(
            &controls,
            &facts,
            frames,
            &Inputs {
                conds: &conds,
                context: &context,
                history: &history,
                chunk_offset: 0,
                tag: k,
                take: k,
            },
        )?;
        requests.push(r);
        lane = Some(l);
    }
    let lane = lane.ok_or_else(|| SessionError::bad_value("takes", "no take to render"))?;
    Ok((requests, lane))
}

/// Render every take through the ring; `progress(done_steps, total_steps)` is called per tick.
pub fn render(
    backend: &mut BackendSet,
    spec: &RenderSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> SessionResult<Vec<RenderedTake>> {
    backend
        .validate()
        .map_err(|e| SessionError::engine("backend", e))?;
    spec.validate(&BackendFacts::of(backend))?;
    let (requests, lane) = plan(backend, spec)?;
    let mut pipe = StreamPipeline::for_denoiser(spec.controls.depth(), backend.denoiser.as_ref())?;
    pipe.set_lane(lane)?;
    let passes = demon_engine::Schedule::new(requests[0].schedule)?.passes();
    let total = passes * requests.len();
    let mut done = 0usize;
    let mut finished = Vec::with_capacity(requests.len());
    let mut step = |pipe: &mut StreamPipeline,
                    backend: &mut BackendSet,
                    finished: &mut Vec<demon_engine::Finished>|
     -> SessionResult<()> {
        let rep = pipe.tick(backend.denoiser.as_mut())?;
        done += rep.active_slots;
        progress(done.min(total), total);
        finished.extend(rep.finished);
        Ok(())
    };
    for r in requests {
        while pipe.queue_len() >= pipe.depth() {
            step(&mut pipe, backend, &mut finished)?;
        }
        pipe.submit(r)?;
    }
    while !pipe.is_idle() {
        step(&mut pipe, backend, &mut finished)?;
    }
    finished.sort_by_key(|f| f.tag);
    finished
        .into_iter()
        .map(|f| {
            let audio = backend.codec.decode(&f.latent, 0)?;
            Ok(RenderedTake {
                seed: f.seed,
                latent: f.latent,
                audio,
            })
        })
        .collect()
}

/// The `LIST/INFO` facts of a WAV `demon` writes (renders and recordings): the version, and the
/// prompt with the style, tempo, key and seed used (`demon_engine::PromptUse`, when the
/// backend reports one) and its fallback note.
pub fn wav_info(
    prompt: &str,
    used: Option<&demon_engine::PromptUse>,
    seed: u64,
) -> demon_audio::WavInfo {
    let mut parts = vec![format!("prompt \"{prompt}\"")];
    if let Some(u) = used {
        parts.push(format!("style {}", u.style));
        parts.extend(u.bpm.map(|b| format!("{b:.0} bpm")));
        parts.extend(u.key.clone());
    }
    parts.push(format!("seed {seed}"));
    parts.extend(used.and_then(|u| u.fallback.clone()));
    demon_audio::WavInfo {
        software: format!("demon {}", env!("CARGO_PKG_VERSION")),
        comment: parts.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_info_says_what_was_used() {
        let used = demon_engine::PromptUse {
            style: "funk".into(),
            bpm: Some(108.0),
            key: Some("A major".into()),
            fallback: Some("not understood: `piano`, `trio` (ignored)".into()),
        };
        let info = wav_info("jazz piano trio", Some(&used), 7);
        assert_eq!(
            info.software,
            format!("demon {}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            info.comment,
            "prompt \"jazz piano trio\"; style funk; 108 bpm; A major; seed 7; not understood: `piano`, `trio` (ignored)"
        );
        assert_eq!(wav_info("x", None, 1).comment, "prompt \"x\"; seed 1");
    }
}
