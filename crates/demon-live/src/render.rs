//! Offline rendering: N takes of one song, in flight together in the ring.
//!
//! This is not a separate batch path: takes are submitted to a `StreamPipeline` exactly as the
//! live session submits its requests, so what a render produces is what the instrument plays.
//! Because the pipeline is bit-identical across depths, `--depth 1` and `--depth 8` give the same
//! files.

use candle_core::Tensor;
use demon_engine::{
    Audio, BackendSet, CfgMode, Conditioning, Curve, CurveSpec, DcwSettings, EngineError,
    LatentMask, Prompt, STEP_CURVE_NAMES, ScheduleParams, SharedLane, SlotCondition, SlotRequest,
    SolverKind, StreamPipeline,
};
use serde::{Deserialize, Serialize};

/// Errors of rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Longest song a render accepts, in seconds.
pub const MAX_SECONDS: f64 = 1200.0;
/// Most takes in one render.
pub const MAX_TAKES: usize = 256;

/// A curve addressed by its control name, as on the command line (`--curve NAME=SPEC`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedCurve {
    pub name: String,
    pub spec: CurveSpec,
}

/// Curve names a render understands beyond the seven per-step curves.
pub const EXTRA_CURVE_NAMES: [&str; 6] = [
    "initial_noise",
    "x0_target",
    "mask",
    "blend",
    "dcw",
    "dcw_high",
];

/// Everything that determines a render.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenderSpec {
    pub prompt: Prompt,
    /// Negative prompt text (guidance pushes away from it); absent = the null condition.
    pub negative: Option<String>,
    pub prompt_b: Option<Prompt>,
    /// Weight of prompt B: a scalar crossfades the conditioning, a curve blends per frame.
    pub blend: Option<CurveSpec>,
    /// Latent frames (25 per second).
    pub frames: usize,
    pub steps: usize,
    pub shift: f32,
    pub denoise: f32,
    pub seed: u64,
    pub depth: usize,
    pub solver: SolverKind,
    /// APG guidance scale; `None` is off.
    pub guidance: Option<f32>,
    pub cfg_mode: CfgMode,
    pub curves: Vec<NamedCurve>,
    pub takes: usize,
    /// How strongly the source's structure conditions the result (0 = not at all).
    pub structure_strength: f32,
    pub dcw: DcwSettings,
}

impl Default for RenderSpec {
    fn default() -> Self {
        Self {
            prompt: Prompt::tags("house"),
            negative: None,
            prompt_b: None,
            blend: None,
            frames: 25 * 20,
            steps: 8,
            shift: 3.0,
            denoise: 1.0,
            seed: 42,
            depth: 4,
            solver: SolverKind::Ode,
            guidance: None,
            cfg_mode: CfgMode::Initialize,
            curves: Vec::new(),
            takes: 1,
            structure_strength: 0.0,
            dcw: DcwSettings::default(),
        }
    }
}

/// One finished take.
pub struct RenderedTake {
    pub seed: u64,
    /// `[1, T, C]`.
    pub latent: Tensor,
    pub audio: Audio,
}

impl RenderSpec {
    /// Reject impossible values before any work starts.
    pub fn validate(&self) -> Result<(), RenderError> {
        if self.frames == 0 {
            return Err(RenderError::Invalid(
                "the song length is zero: give --seconds greater than 0".into(),
            ));
        }
        let seconds = self.frames as f64 / demon_engine::FRAMES_PER_SECOND;
        if seconds > MAX_SECONDS {
            return Err(RenderError::Invalid(format!(
                "{seconds:.0} s is longer than the {MAX_SECONDS:.0} s limit"
            )));
        }
        if self.takes == 0 || self.takes > MAX_TAKES {
            return Err(RenderError::Invalid(format!(
                "takes must be in 1..={MAX_TAKES}, got {}",
                self.takes
            )));
        }
        ScheduleParams {
            steps: self.steps,
            shift: self.shift,
            denoise: self.denoise,
        }
        .validate()?;
        if self.depth == 0 || self.depth > demon_engine::MAX_DEPTH {
            return Err(EngineError::param(
                "depth",
                format!("{} is outside 1..={}", self.depth, demon_engine::MAX_DEPTH),
            )
            .into());
        }
        if let Some(g) = self.guidance
            && !(g.is_finite() && (0.0..=30.0).contains(&g))
        {
            return Err(EngineError::param("guidance", format!("{g} is outside [0, 30]")).into());
        }
        if !(self.structure_strength.is_finite() && (0.0..=1.0).contains(&self.structure_strength))
        {
            return Err(EngineError::param(
                "structure",
                format!("{} is outside [0, 1]", self.structure_strength),
            )
            .into());
        }
        self.prompt.validate()?;
        if let Some(b) = &self.prompt_b {
            b.validate()?;
        }
        for c in &self.curves {
            c.spec.validate(&c.name)?;
            if !STEP_CURVE_NAMES.contains(&c.name.as_str())
                && !EXTRA_CURVE_NAMES.contains(&c.name.as_str())
            {
                return Err(EngineError::curve(
                    &c.name,
                    format!(
                        "unknown curve name (one of {}, {})",
                        STEP_CURVE_NAMES.join(", "),
                        EXTRA_CURVE_NAMES.join(", ")
                    ),
                )
                .into());
            }
        }
        if let Some(b) = &self.blend {
            b.validate("blend")?;
        }
        Ok(())
    }
}

/// Build the requests (one per take) and the shared lane of a render.
pub fn build_requests(
    backend: &mut BackendSet,
    spec: &RenderSpec,
    source: Option<&Tensor>,
) -> Result<(Vec<SlotRequest>, SharedLane), RenderError> {
    spec.validate()?;
    let t = spec.frames;
    if let Some(s) = source {
        let want = [1, t, backend.codec.latent_channels()];
        if s.dims() != want {
            return Err(EngineError::shape(
                "source latent",
                format!("{want:?}"),
                format!("{:?}", s.dims()),
            )
            .into());
        }
    }
    let cond_a = backend.conditioner.condition(&spec.prompt)?;
    let context = backend.conditioner.context(
        source,
        t,
        if source.is_some() {
            spec.structure_strength
        } else {
            0.0
        },
    )?;
    let mut lane = SharedLane {
        dcw: spec.dcw.clone(),
        ..Default::default()
    };

    let mut blend_curve: Option<Curve> = match &spec.blend {
        Some(b) => Some(b.to_curve("blend", t)?),
        None => None,
    };
    let mut template = SlotRequest::new(cond_a.clone(), context, t, spec.seed);
    template.schedule = ScheduleParams {
        steps: spec.steps,
        shift: spec.shift,
        denoise: spec.denoise,
    };
    template.solver = spec.solver;
    template.cfg_mode = spec.cfg_mode;
    template.source = source.cloned();
    for c in &spec.curves {
        let curve = c.spec.to_curve(&c.name, t)?;
        apply_named_curve(
            &mut template,
            &mut lane,
            &c.name,
            curve,
            source,
            &mut blend_curve,
        )?;
    }
    if let Some(p) = &spec.prompt_b {
        let cond_b = backend.conditioner.condition(p)?;
        match blend_curve {
            Some(Curve::Scalar(w)) => {
                template.conditions = vec![SlotCondition::new(Conditioning::lerp(
                    &cond_a,
                    &cond_b,
                    w.clamp(0.0, 1.0),
                )?)];
            }
            Some(curve) => {
                let w = curve.clamped(0.0, 1.0);
                let wa = w.map("blend", |x| 1.0 - x)?;
                template.conditions = vec![
                    SlotCondition::weighted(cond_a.clone(), wa),
                    SlotCondition::weighted(cond_b, w),
                ];
            }
            None => {
                template.conditions = vec![SlotCondition::new(Conditioning::lerp(
                    &cond_a, &cond_b, 0.5,
                )?)];
            }
        }
    } else if blend_curve.is_some() {
        return Err(RenderError::Invalid(
            "a blend needs a second prompt (--prompt-b)".into(),
        ));
    }
    if let Some(g) = spec.guidance {
        template.curves.guidance = Some(Curve::scalar("guidance", g)?);
        let neg = match &spec.negative {
            Some(text) => backend.conditioner.condition(&Prompt {
                tags: text.clone(),
                ..spec.prompt.clone()
            })?,
            None => backend.conditioner.null_condition(&cond_a)?,
        };
        template.negatives = vec![SlotCondition::new(neg)];
    } else if spec.negative.is_some() {
        return Err(RenderError::Invalid(
            "a negative prompt only acts with guidance: add --guidance (for example 3)".into(),
        ));
    }
    let requests = (0..spec.takes as u64)
        .map(|k| {
            let mut r = template.clone();
            r.seed = spec.seed.wrapping_add(k);
            r.tag = k;
            r
        })
        .collect();
    lane.validate(backend.denoiser.latent_channels())?;
    Ok((requests, lane))
}

/// Route a named curve to its place in a request or the lane.
pub fn apply_named_curve(
    req: &mut SlotRequest,
    lane: &mut SharedLane,
    name: &str,
    curve: Curve,
    source: Option<&Tensor>,
    blend: &mut Option<Curve>,
) -> Result<(), RenderError> {
    let need_source = |what: &str| -> Result<Tensor, RenderError> {
        source.cloned().ok_or_else(|| {
            RenderError::Invalid(format!("the `{what}` curve needs a source (--source)"))
        })
    };
    match name {
        n if STEP_CURVE_NAMES.contains(&n) => {
            *req.curves.field_mut(n)? = Some(curve);
            req.curves.validate()?;
        }
        "initial_noise" => {
            curve.check_range("initial_noise", 0.0, 1.0)?;
            need_source("initial_noise")?;
            req.initial_noise_curve = Some(curve);
        }
        "x0_target" => {
            curve.check_range("x0_target", 0.0, 1.0)?;
            req.x0_target = Some(need_source("x0_target")?);
            req.x0_target_curve = Some(curve);
        }
        "mask" => {
            curve.check_range("mask", 0.0, 1.0)?;
            req.latent_mask = Some(LatentMask {
                mask: curve,
                original: need_source("mask")?,
            });
        }
        "blend" => {
            curve.check_range("blend", 0.0, 1.0)?;
            *blend = Some(curve);
        }
        "dcw" => lane.dcw.scaler = curve,
        "dcw_high" => lane.dcw.high_scaler = curve,
        other => return Err(EngineError::curve(other, "unknown curve name").into()),
    }
    Ok(())
}

/// Render every take through the ring; `progress(done_steps, total_steps)` is called per tick.
pub fn render(
    backend: &mut BackendSet,
    spec: &RenderSpec,
    source: Option<&Tensor>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<RenderedTake>, RenderError> {
    backend.validate()?;
    let (requests, lane) = build_requests(backend, spec, source)?;
    let mut pipe = StreamPipeline::for_denoiser(spec.depth, backend.denoiser.as_ref())?;
    pipe.set_lane(lane)?;
    let passes = demon_engine::Schedule::new(requests[0].schedule)?.passes();
    let total = passes * requests.len();
    let mut done = 0usize;
    let mut finished = Vec::with_capacity(requests.len());
    let mut step = |pipe: &mut StreamPipeline,
                    backend: &mut BackendSet,
                    finished: &mut Vec<demon_engine::Finished>|
     -> Result<(), RenderError> {
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
