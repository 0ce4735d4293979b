//! `DenoiseBatch::sources`: each row is told the clean source its trajectory started from, and
//! only when the initial state really holds it (denoise < 1 with t₀ < 1, or an initial-noise
//! curve), for positive and negative (guidance) rows alike.

use candle_core::{Device, Tensor};
use demon_engine::testing::PointMassDenoiser;
use demon_engine::*;

const C: usize = 4;
const T: usize = 10;

/// The point-mass model, recording for every call which rows carried which source.
struct Recording {
    inner: PointMassDenoiser,
    /// Per call: per row, the bits of the row's source, if any.
    seen: Vec<Vec<Option<Vec<u32>>>>,
}

impl Denoiser for Recording {
    fn latent_channels(&self) -> usize {
        C
    }
    fn context_channels(&self) -> usize {
        0
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> Result<Tensor> {
        assert_eq!(
            batch.sources.len(),
            batch.rows(),
            "one source entry per row"
        );
        self.seen.push(
            (0..batch.rows())
                .map(|i| batch.source(i).map(bits))
                .collect(),
        );
        self.inner.velocity(batch)
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn source(seed: u64) -> Tensor {
    rng::normal_tensor(seed, rng::NoiseStream::Custom(3, 0), T, C, &Device::Cpu).unwrap()
}

fn request(src: Option<&Tensor>, denoise: f32, seed: u64) -> SlotRequest {
    let ctx = Tensor::zeros((1, T, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.3), ctx, T, seed);
    r.source = src.cloned();
    r.schedule.denoise = denoise;
    r
}

/// Run the requests together at depth 2; the rows' sources of every call.
fn seen(requests: Vec<SlotRequest>) -> Vec<Vec<Option<Vec<u32>>>> {
    let mut d = Recording {
        inner: PointMassDenoiser::new(C, 0),
        seen: Vec::new(),
    };
    let mut p = StreamPipeline::for_denoiser(2, &d).unwrap();
    for r in requests {
        p.submit(r).unwrap();
    }
    p.flush(&mut d).unwrap();
    d.seen
}

#[test]
fn rows_started_from_a_source_carry_it_and_rows_from_noise_do_not() {
    let (a, b) = (source(1), source(2));
    for (name, req, want) in [
        ("denoise 0.5", request(Some(&a), 0.5, 1), Some(bits(&a))),
        ("no source", request(None, 0.5, 1), None),
        ("denoise 1", request(Some(&a), 1.0, 1), None),
        // 8 / ⌊8 / 0.9⌋ = 1: the schedule starts from pure noise although denoise < 1.
        ("denoise 0.9 at 8 steps", request(Some(&a), 0.9, 1), None),
    ] {
        let calls = seen(vec![req]);
        assert!(!calls.is_empty(), "{name}");
        for rows in &calls {
            assert_eq!(rows, &vec![want.clone()], "{name}");
        }
    }
    // Two slots in one batch keep their own sources, in row order.
    let calls = seen(vec![request(Some(&a), 0.5, 1), request(Some(&b), 0.4, 2)]);
    assert!(calls.iter().any(|rows| rows.len() == 2));
    for rows in calls.iter().filter(|rows| rows.len() == 2) {
        assert_eq!(rows, &vec![Some(bits(&a)), Some(bits(&b))]);
    }
    // An initial-noise curve mixes the source into the start at any denoise.
    let mut r = request(Some(&a), 1.0, 1);
    r.initial_noise_curve = Some(Curve::constant(0.7));
    assert!(seen(vec![r]).iter().flatten().all(|s| s == &Some(bits(&a))));
}

#[test]
fn guidance_rows_carry_the_slot_source_too() {
    let a = source(4);
    let mut r = request(Some(&a), 0.6, 3);
    r.curves.guidance = Some(Curve::constant(3.0));
    r.cfg_mode = CfgMode::Full;
    r.negatives
        .push(SlotCondition::new(PointMassDenoiser::conditioning(-0.3)));
    let calls = seen(vec![r]);
    assert!(calls.len() >= 2, "positive and negative passes");
    assert!(calls.iter().flatten().all(|s| s == &Some(bits(&a))));
}
