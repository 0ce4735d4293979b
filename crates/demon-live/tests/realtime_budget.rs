//! Real time is a contract (issue 10 item 2): a model made slow on purpose overruns the tick
//! budget; the session flags the overload at once, lowers the depth one step at a time until
//! ticks fit, and gives the depth back step by step once the model is fast again. The caps are
//! recorded in the session file's clock lines, and a replay follows them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use candle_core::Tensor;
use demon_engine::{DenoiseBatch, Denoiser};
use demon_live::budget::RealtimeReport;
use demon_live::core::{LiveCore, SessionConfig};
use demon_sketch::SketchDenoiser;

/// The sketch model, taking `per_row_us` more per batch row (per generation in flight), as a
/// model too big for the machine would.
struct Slow {
    inner: SketchDenoiser,
    per_row_us: Arc<AtomicU64>,
}

impl Denoiser for Slow {
    fn latent_channels(&self) -> usize {
        self.inner.latent_channels()
    }
    fn context_channels(&self) -> usize {
        self.inner.context_channels()
    }
    fn device(&self) -> &candle_core::Device {
        self.inner.device()
    }
    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> demon_engine::Result<Tensor> {
        let us = self.per_row_us.load(Ordering::Acquire) * batch.rows() as u64;
        std::thread::sleep(Duration::from_micros(us));
        self.inner.velocity(batch)
    }
}

fn core(per_row_us: Arc<AtomicU64>) -> LiveCore {
    let d = candle_core::Device::Cpu;
    let backend = demon_sketch::backend_with(Box::new(Slow {
        inner: SketchDenoiser::new(d),
        per_row_us,
    }));
    let cfg = SessionConfig {
        song_seconds: 4.0,
        prompt: "house, 124 bpm".into(),
        knobs: [("depth".to_string(), 8.0)].into(),
        // 200 ms of audio a tick: a budget a debug build of the sketch model keeps at depth 8
        // on a busy machine, so only the injected slowness overruns it.
        samples_per_tick: 9600,
        receptive_field: Some(demon_engine::ReceptiveField {
            before: 25,
            after: 1,
        }),
        ..Default::default()
    };
    LiveCore::new(cfg, backend).unwrap()
}

/// Run `ticks` ticks; the budget report after each.
fn run(core: &mut LiveCore, ticks: usize) -> Vec<RealtimeReport> {
    (0..ticks)
        .map(|_| core.tick(None).unwrap().realtime)
        .collect()
}

/// The caps in the order they changed, starting from `from`.
fn steps(from: Option<usize>, reports: &[RealtimeReport]) -> Vec<Option<usize>> {
    let mut last = from;
    let mut out = Vec::new();
    for r in reports {
        if r.depth_cap != last {
            out.push(r.depth_cap);
            last = r.depth_cap;
        }
    }
    out
}

#[test]
fn slow_ticks_are_flagged_degraded_one_step_at_a_time_and_recovered() {
    let per_row_us = Arc::new(AtomicU64::new(0));
    let mut core = core(per_row_us.clone());
    core.set_degrade(true);
    // The ring fills at depth 8 while the model is fast.
    let warm = run(&mut core, 40);
    assert_eq!(warm[0].budget_ms, 200.0, "9600 samples at 48 kHz");
    assert_eq!(core.state().depth, 8);

    // 70 ms per generation in flight: 560 ms a tick at depth 8, over twice the budget; 3 in
    // flight (210 ms) are still over, 2 (140 ms plus the model's own time) fit.
    per_row_us.store(70_000, Ordering::Release);
    let slow = run(&mut core, 100);
    let first_flag = slow.iter().position(|r| r.overloaded).expect("flagged");
    assert!(
        first_flag <= 2,
        "the flag shows at once (tick {first_flag})"
    );
    let down = steps(None, &slow);
    assert!(!down.is_empty(), "the depth was lowered: {slow:?}");
    let mut expect = 8;
    for c in &down {
        expect -= 1;
        assert_eq!(*c, Some(expect), "one step at a time: {down:?}");
    }
    let last = *slow.last().unwrap();
    assert!(
        expect <= 2 && !last.overloaded && last.load < 1.0,
        "ticks fit again at depth {expect}: {last:?}"
    );
    let st = core.state();
    assert_eq!(st.depth, expect, "the ring runs at the cap");
    assert_eq!(st.knobs["depth"], 8.0, "the performer's depth is kept");
    assert_eq!(st.realtime, last);

    // Fast again: the depth comes back one step at a time, to the performer's 8.
    per_row_us.store(0, Ordering::Release);
    let fast = run(&mut core, 25 * 10);
    let up = steps(Some(expect), &fast);
    let mut want: Vec<Option<usize>> = (expect + 1..8).map(Some).collect();
    want.push(None);
    assert_eq!(up, want, "restored step by step");
    assert!(!fast.last().unwrap().overloaded);
    assert_eq!(core.state().depth, 8);
}

#[test]
fn without_degrade_the_overload_is_reported_and_the_depth_kept() {
    let per_row_us = Arc::new(AtomicU64::new(70_000));
    let mut core = core(per_row_us);
    let reports = run(&mut core, 12);
    let last = reports.last().unwrap();
    assert!(last.overloaded && last.load > 1.0, "{last:?}");
    assert!(reports.iter().all(|r| r.depth_cap.is_none()));
    assert_eq!(core.state().depth, 8);
}
