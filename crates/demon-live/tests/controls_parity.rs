//! Issue 9 item 1: a render and a live session of the same controls build the same requests.
//!
//! A seeded property test over random control lists (knobs, curves, prompts, solver, CFG mode,
//! DCW, with and without a source): every message goes through the live core's `apply` and
//! through a render's `RenderSpec::apply`; both must accept or refuse it alike, hold equal
//! `Controls` afterwards, and build identical `(SlotRequest, SharedLane)` (the render's
//! `render::plan`, the live core's `next_request`). Because both sides reach the builder only
//! through their `Controls`, a path that set a request field from anything else would break
//! the equality.

use candle_core::{DType, Tensor};
use demon_engine::{
    BackendSet, CfgMode, Codec, CurveSpec, DcwMode, Prompt, ReceptiveField, SlotCondition,
    SlotRequest, SolverKind,
};
use demon_live::control::{ControlMessage, SourceSpec};
use demon_live::controls::{CURVE_NAMES, KNOBS};
use demon_live::core::{LiveCore, SessionConfig, latent_spec};
use demon_live::render::{self, RenderSpec};
use demon_live::{BackendFacts, Controls};
use demon_sketch::SketchCodec;

const SECONDS: f64 = 4.0;
const FRAMES: usize = 100;
const CASES: u64 = 300;

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

/// xorshift64*: a seeded generator, so a failing case can be rerun by its number.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// A knob value: mostly inside the catalog's range, sometimes outside (both sides must refuse).
fn knob_value(rng: &mut Rng, name: &str) -> f64 {
    let spec = KNOBS.iter().find(|k| k.name == name).expect("catalog knob");
    if rng.chance(0.08) {
        spec.max + 1.0 + rng.unit()
    } else {
        rng.range(spec.min, spec.max)
    }
}

fn curve_spec(rng: &mut Rng, name: &str) -> CurveSpec {
    // Guidance lives above 1; everything else in [0, 1] (some curves refuse parts of it, and
    // both sides must refuse alike).
    let (lo, hi) = if name == "guidance" {
        (1.0, 5.0)
    } else {
        (0.0, 1.0)
    };
    let kind = rng.below(4);
    let cycles = 1.0 + rng.below(3) as f32;
    let mut v = || rng.range(lo, hi) as f32;
    match kind {
        0 => CurveSpec::Constant { value: v() },
        1 => CurveSpec::Ramp {
            start: v(),
            end: v(),
        },
        2 => {
            let (min, max) = (v(), v());
            CurveSpec::Sine {
                min: min.min(max),
                max: min.max(max),
                cycles,
                phase: 0.0,
            }
        }
        _ => CurveSpec::Square {
            min: v(),
            max: v(),
            cycles,
            duty: 0.5,
        },
    }
}

fn optional_text(rng: &mut Rng, choices: &[&str]) -> Option<String> {
    rng.chance(0.6).then(|| rng.pick(choices).to_string())
}

/// One random control message of any kind a control value can take.
fn message(rng: &mut Rng) -> ControlMessage {
    match rng.below(8) {
        0 | 1 => {
            let name = rng.pick(KNOBS).name;
            ControlMessage::SetKnob {
                name: name.into(),
                value: knob_value(rng, name),
            }
        }
        2 => {
            let values = (0..1 + rng.below(6))
                .map(|_| {
                    let name = rng.pick(KNOBS).name;
                    (name.to_string(), knob_value(rng, name))
                })
                .collect();
            ControlMessage::SetKnobs { values }
        }
        3 | 4 => {
            let name = *rng.pick(&CURVE_NAMES);
            let curve = (!rng.chance(0.15)).then(|| curve_spec(rng, name));
            ControlMessage::SetCurve {
                name: name.into(),
                curve,
            }
        }
        5 => ControlMessage::SetPrompt {
            prompt: optional_text(rng, &["house", "techno, A minor", "ambient, 100 bpm"]),
            prompt_b: optional_text(rng, &["", "funk", "techno"]),
            negative: optional_text(rng, &["", "techno", "drums"]),
            bpm: rng
                .chance(0.4)
                .then(|| rng.range(70.0, 170.0).round() as f32),
            key: optional_text(rng, &["", "A minor", "F# major"]),
            lyrics: None,
            time_signature: None,
            language: None,
            task: None,
        },
        6 => match rng.below(2) {
            0 => ControlMessage::SetSolver {
                solver: *rng.pick(&[SolverKind::Ode, SolverKind::Sde]),
            },
            _ => ControlMessage::SetCfgMode {
                mode: *rng.pick(&[CfgMode::Full, CfgMode::Initialize, CfgMode::SelfNoise]),
            },
        },
        _ => ControlMessage::SetDcw {
            enabled: rng.chance(0.5).then(|| rng.chance(0.7)),
            mode: rng
                .chance(0.5)
                .then(|| *rng.pick(&[DcwMode::Low, DcwMode::High, DcwMode::Double, DcwMode::Pix])),
            wavelet: rng
                .chance(0.3)
                .then(|| *rng.pick(&demon_engine::Wavelet::ALL)),
        },
    }
}

/// A source latent `[1, FRAMES, 64]` of smooth random values.
fn source_latent(rng: &mut Rng) -> Tensor {
    let v: Vec<f32> = (0..FRAMES * 64)
        .map(|_| rng.range(-1.0, 1.0) as f32)
        .collect();
    Tensor::from_vec(v, (1, FRAMES, 64), &candle_core::Device::Cpu).expect("latent")
}

fn live_core(source: Option<&Tensor>) -> LiveCore {
    let cfg = SessionConfig {
        song_seconds: SECONDS,
        prompt: "house".into(),
        // A render has no time for knobs to travel; the live side jumps too.
        slew_per_second: 0.0,
        source: match source {
            Some(t) => latent_spec("src", t).expect("latent spec"),
            None => SourceSpec::None,
        },
        receptive_field: Some(ReceptiveField {
            before: demon_sketch::synth::DESIGN_MARGIN_BEFORE,
            after: demon_sketch::synth::DESIGN_MARGIN_AFTER,
        }),
        ..Default::default()
    };
    LiveCore::new(cfg, sketch()).expect("live core")
}

fn render_spec(source: Option<&Tensor>) -> RenderSpec {
    let mut spec = RenderSpec::new(Prompt::tags("house"), FRAMES);
    if let Some(t) = source {
        spec.controls
            .set_source(Some(("src".to_string(), t.clone())));
        // Measured as the live core measures its source (and as `render::plan` would).
        let audio = SketchCodec::new(candle_core::Device::Cpu)
            .decode(t, 0)
            .expect("decode");
        spec.controls
            .set_source_analysis(Some(demon_live::analysis::SourceAnalysis::of(&audio)));
    }
    spec
}

fn bits(t: &Tensor) -> (Vec<usize>, Vec<u32>) {
    let v: Vec<f32> = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("readable tensor");
    (t.dims().to_vec(), v.into_iter().map(f32::to_bits).collect())
}

fn condition(c: &SlotCondition) -> String {
    format!(
        "{:?}",
        (
            bits(&c.conditioning.states),
            bits(&c.conditioning.mask),
            &c.weight,
            c.step_range,
            c.context.as_ref().map(bits),
        )
    )
}

/// Everything a request holds, tensors by value; the tag (the caller's label: a take number
/// offline, the song epoch and chunk live) is left out.
fn fingerprint(r: &SlotRequest) -> String {
    let fed = (
        bits(&r.context),
        r.source.as_ref().map(bits),
        r.x0_target.as_ref().map(bits),
        r.latent_mask.as_ref().map(|m| (&m.mask, bits(&m.original))),
    );
    let schedule = (r.frames, r.seed, r.schedule, r.solver, r.cfg_mode);
    let curves = (
        &r.curves,
        &r.x0_target_curve,
        r.x0_target_gate,
        &r.initial_noise_curve,
    );
    let conditions = (
        r.conditions.iter().map(condition).collect::<Vec<_>>(),
        r.negatives.iter().map(condition).collect::<Vec<_>>(),
    );
    format!("{schedule:?} {conditions:?} {curves:?} {fed:?}")
}

#[test]
fn a_render_and_a_live_session_of_the_same_controls_build_identical_requests() {
    let mut backend = sketch();
    let facts = BackendFacts::of(&mut backend);
    let (mut refused, mut with_source) = (0, 0);
    for case in 0..CASES {
        let mut rng = Rng::new(case);
        let source = rng.chance(0.5).then(|| source_latent(&mut rng));
        with_source += source.is_some() as usize;
        let mut live = live_core(source.as_ref());
        let mut spec = render_spec(source.as_ref());
        assert_eq!(live.controls(), &spec.controls, "case {case}: start");
        for _ in 0..1 + rng.below(10) {
            let msg = message(&mut rng);
            let a = live.apply(&msg).map(|_| ()).map_err(|e| e.code());
            let b = spec.apply(&msg, &facts).map_err(|e| e.code());
            assert_eq!(a, b, "case {case}: {msg:?} accepted or refused differently");
            refused += a.is_err() as usize;
        }
        assert_eq!(live.controls(), &spec.controls, "case {case}: controls");
        let (live_request, live_lane) = live.next_request().expect("live request");
        let (requests, render_lane) = render::plan(&mut backend, &spec).expect("render plan");
        assert_eq!(live_lane, render_lane, "case {case}: lane");
        assert_eq!(
            fingerprint(&live_request),
            fingerprint(&requests[0]),
            "case {case}: request"
        );
    }
    // The cases reach both branches: refusals and sources.
    assert!(refused > 20 && with_source > 100, "{refused} {with_source}");
}

/// A knob set through the live `apply` and through a render's control list lands in the same
/// `Controls` value, and a knob moved by hand on the `Controls` (not through a message) makes
/// the two differ: the comparison sees every control.
#[test]
fn live_apply_and_a_render_control_list_hold_the_same_controls() {
    let mut backend = sketch();
    let facts = BackendFacts::of(&mut backend);
    let list = [
        ControlMessage::SetKnob {
            name: "guidance".into(),
            value: 3.0,
        },
        ControlMessage::SetKnobs {
            values: [("steps".to_string(), 6.0), ("denoise".to_string(), 0.4)].into(),
        },
        ControlMessage::SetCurve {
            name: "ode_noise".into(),
            curve: Some(CurveSpec::Ramp {
                start: 0.0,
                end: 0.3,
            }),
        },
        ControlMessage::SetPrompt {
            prompt: Some("techno".into()),
            prompt_b: None,
            negative: Some("drums".into()),
            bpm: Some(128.0),
            key: None,
            lyrics: None,
            time_signature: None,
            language: None,
            task: None,
        },
        ControlMessage::SetSolver {
            solver: SolverKind::Sde,
        },
    ];
    let mut live = live_core(None);
    let mut spec = render_spec(None);
    for m in &list {
        live.apply(m).expect("live apply");
        spec.apply(m, &facts).expect("render apply");
    }
    assert_eq!(live.controls(), &spec.controls);
    assert_eq!(spec.controls.knobs().guidance, 3.0);
    assert_eq!(spec.controls.steps(), 6);
    assert_eq!(spec.controls.solver, SolverKind::Sde);
    let mut by_hand: Controls = spec.controls.clone();
    by_hand.set_knob("shift", 2.0, &facts).expect("shift");
    assert_ne!(live.controls(), &by_hand);
    // And the requests follow: the hand-set shift reaches the render's request.
    spec.controls = by_hand;
    let (requests, _) = render::plan(&mut backend, &spec).expect("plan");
    let (live_request, _) = live.next_request().expect("live request");
    assert_eq!(requests[0].schedule.shift, 2.0);
    assert_ne!(live_request.schedule.shift, 2.0);
}
