//! The adaptive decode lead (issue 10, item 1): how far ahead of the playhead windows are
//! decoded, shrunk to what this machine and its clients actually need instead of a fixed
//! half second.
//!
//! What a slice needs is measured in one unit, milliseconds of playhead travel: a slice is
//! chosen at the start of tick `k` (the server's playhead then is `P_k`) and must reach a
//! client before that client's playhead reaches it. The client reports where its playhead was
//! when the slice arrived (`C`); `C − P_k` is the lead that slice needed, whatever it was spent
//! on (the tick, the decode, the socket, the page's clock being ahead of the server's). With no
//! client reporting, the tick plus decode cost stands in for it (a slice is ready at the end of
//! its tick). The lead is then
//!
//! ```text
//! lead_frames = ceil((p99(need) + safety) / frame_ms),  safety = max(SAFETY_MIN_MS, p99 − p50)
//! ```
//!
//! over the last [`WINDOW`] needs (the target starts `lead` frames after the first frame
//! boundary at or after the playhead, so at least `lead` whole frames ahead). It grows at once
//! when a need says so (a slice would have landed late), shrinks only after
//! [`SHRINK_AFTER_TICKS`] calm ticks, by a quarter of its distance to the target (at least one
//! frame), and never leaves `[floor, ceiling]`. The lead in force is written to every clock line
//! of a session file, so replays follow it exactly.

use std::collections::VecDeque;

/// Needs kept for the quantiles (about five seconds of ticks with one client reporting).
pub const WINDOW: usize = 256;
/// Ticks the target must stay below the lead before it shrinks by one frame.
pub const SHRINK_AFTER_TICKS: u32 = 12;
/// The smallest safety margin added to the p99 need.
pub const SAFETY_MIN_MS: f64 = 20.0;
/// Server playheads remembered per tick, to turn a client's report into a need.
const PLAYHEADS: usize = 512;

/// The lead controller. Pure arithmetic on what it is told; the core feeds it.
#[derive(Clone, Debug)]
pub struct LeadController {
    floor_frames: u32,
    ceiling_frames: u32,
    frame_ms: f64,
    lead_frames: u32,
    needs_ms: VecDeque<f64>,
    calm_ticks: u32,
    /// `(tick, server playhead in samples)` by `tick % PLAYHEADS`.
    playheads: Vec<(u64, u64)>,
}

impl LeadController {
    /// Start at `start_frames` (clamped to `[floor, ceiling]`); `frame_ms` is one latent frame.
    pub fn new(start_frames: u32, floor_frames: u32, ceiling_frames: u32, frame_ms: f64) -> Self {
        let floor_frames = floor_frames.max(1);
        let ceiling_frames = ceiling_frames.max(floor_frames);
        Self {
            floor_frames,
            ceiling_frames,
            frame_ms,
            lead_frames: start_frames.clamp(floor_frames, ceiling_frames),
            needs_ms: VecDeque::with_capacity(WINDOW),
            calm_ticks: 0,
            playheads: vec![(u64::MAX, 0); PLAYHEADS],
        }
    }

    pub fn lead_frames(&self) -> u32 {
        self.lead_frames
    }

    pub fn floor_frames(&self) -> u32 {
        self.floor_frames
    }

    /// The server's playhead at the start of `tick` (in samples).
    pub fn record_playhead(&mut self, tick: u64, playhead: u64) {
        self.playheads[(tick % PLAYHEADS as u64) as usize] = (tick, playhead);
    }

    /// A measured need in milliseconds of playhead travel.
    pub fn observe_need(&mut self, need_ms: f64) {
        if !need_ms.is_finite() {
            return;
        }
        if self.needs_ms.len() == WINDOW {
            self.needs_ms.pop_front();
        }
        self.needs_ms.push_back(need_ms);
    }

    /// A client's report: the slice of `tick` arrived with the client's playhead at
    /// `client_sample`. `span_samples` is the length of the playing region (the need is taken
    /// modulo it, in `(−span/2, span/2]`). Returns the need, or `None` for a tick too old to
    /// remember.
    pub fn observe_arrival(
        &mut self,
        tick: u64,
        client_sample: u64,
        span_samples: u64,
        sample_rate: u32,
    ) -> Option<f64> {
        let (t, server) = self.playheads[(tick % PLAYHEADS as u64) as usize];
        if t != tick || span_samples == 0 || sample_rate == 0 {
            return None;
        }
        let need_ms = wrapped_ms(client_sample, server, span_samples, sample_rate);
        self.observe_need(need_ms);
        Some(need_ms)
    }

    /// The lead the needs ask for now (frames, within the floor and the ceiling).
    pub fn target_frames(&self) -> u32 {
        if self.needs_ms.is_empty() {
            return self.lead_frames;
        }
        let mut sorted: Vec<f64> = self.needs_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let p99 = quantile(&sorted, 0.99);
        let p50 = quantile(&sorted, 0.5);
        let safety = SAFETY_MIN_MS.max(p99 - p50);
        let frames = ((p99 + safety) / self.frame_ms).ceil();
        (frames.max(0.0) as u32).clamp(self.floor_frames, self.ceiling_frames)
    }

    /// Between ticks, on a client's report: grow at once when the target is above the lead
    /// (a slice would land late); shrinking waits for [`update`](Self::update).
    pub fn grow(&mut self) -> u32 {
        let target = self.target_frames();
        if target > self.lead_frames {
            self.lead_frames = target;
            self.calm_ticks = 0;
        }
        self.lead_frames
    }

    /// Once per tick: grow at once to the target, shrink one frame after a calm stretch.
    /// Returns the lead for the next tick.
    pub fn update(&mut self) -> u32 {
        let target = self.target_frames();
        if target > self.lead_frames {
            self.lead_frames = target;
            self.calm_ticks = 0;
        } else if target < self.lead_frames {
            self.calm_ticks += 1;
            if self.calm_ticks >= SHRINK_AFTER_TICKS {
                // A quarter of the way to the target (at least a frame): back from a stall's
                // 3 s in seconds, not a minute, and never under what the needs ask.
                let step = ((self.lead_frames - target) / 4).max(1);
                self.lead_frames -= step;
                self.calm_ticks = 0;
            }
        } else {
            self.calm_ticks = 0;
        }
        self.lead_frames
    }
}

/// `(a − b)` on a loop of `span` samples, in `(−span/2, span/2]`, as milliseconds.
pub fn wrapped_ms(a: u64, b: u64, span: u64, sample_rate: u32) -> f64 {
    let d = (a % span + span - b % span) % span;
    let d = if d > span / 2 {
        d as f64 - span as f64
    } else {
        d as f64
    };
    d * 1000.0 / sample_rate as f64
}

/// Nearest-rank quantile of sorted values (`q` in [0, 1]); 0 for none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME_MS: f64 = 40.0;

    #[test]
    fn shrinks_on_calm_input_to_what_the_needs_ask() {
        let mut c = LeadController::new(13, 2, 75, FRAME_MS);
        // Needs of 65 ms, no jitter: ceil((65 + 20) / 40) = 3 frames.
        let mut leads = Vec::new();
        for _ in 0..400 {
            c.observe_need(65.0);
            leads.push(c.update());
        }
        assert_eq!(c.target_frames(), 3);
        assert_eq!(*leads.last().unwrap(), 3);
        // After SHRINK_AFTER_TICKS calm ticks, a quarter of the way down (at least a frame):
        // 13 → 11 → 9 → 8 → … → 3, never faster, never under the target.
        let first_drop = leads.iter().position(|&l| l < 13).unwrap();
        assert_eq!(first_drop as u32, SHRINK_AFTER_TICKS - 1);
        assert_eq!(leads[first_drop], 11);
        for w in leads.windows(2) {
            assert!(w[0] >= w[1] && w[1] >= 3, "{w:?}");
            assert!(
                w[0] - w[1] <= ((w[0] - 3) / 4).max(1),
                "shrank too fast: {w:?}"
            );
        }
        let drops = leads.windows(2).filter(|w| w[1] < w[0]).count();
        let reached = leads.iter().position(|&l| l == 3).unwrap();
        assert_eq!(reached as u32, drops as u32 * SHRINK_AFTER_TICKS - 1);
        assert_eq!(drops, 8, "{leads:?}");
    }

    #[test]
    fn grows_at_once_on_a_spike() {
        let mut c = LeadController::new(3, 2, 75, FRAME_MS);
        for _ in 0..50 {
            c.observe_need(65.0);
            assert_eq!(c.update(), 3);
        }
        // One slice needed 210 ms: p99 of 51 needs is that one; p50 is 65, so the safety is
        // 145 ms: ceil(355 / 40) = 9 frames, on this very tick.
        c.observe_need(210.0);
        assert_eq!(c.update(), 9);
        // And it stays while the spike is the top 1 % of the window (fewer than 100 needs).
        for _ in 0..40 {
            c.observe_need(65.0);
            assert_eq!(c.update(), 9);
        }
    }

    #[test]
    fn never_leaves_floor_and_ceiling() {
        let mut c = LeadController::new(0, 2, 20, FRAME_MS);
        assert_eq!(c.lead_frames(), 2, "the start is clamped to the floor");
        for _ in 0..1000 {
            c.observe_need(-500.0); // a client far behind the server
            assert!(c.update() >= 2);
        }
        assert_eq!(c.lead_frames(), 2);
        let mut c = LeadController::new(0, 2, 20, FRAME_MS);
        c.observe_need(1e9);
        assert_eq!(c.update(), 20, "the ceiling holds");
        c.observe_need(f64::NAN);
        assert_eq!(c.update(), 20, "a NaN need is ignored");
    }

    #[test]
    fn a_client_report_is_its_playhead_past_the_servers() {
        let mut c = LeadController::new(5, 2, 75, FRAME_MS);
        c.record_playhead(7, 48_000);
        // 4800 samples past the server's playhead at 48 kHz: 100 ms.
        assert_eq!(c.observe_arrival(7, 52_800, 480_000, 48_000), Some(100.0));
        // Across the loop's end: the server at 479 040, the client wrapped to 960: 40 ms.
        c.record_playhead(8, 479_040);
        assert_eq!(c.observe_arrival(8, 960, 480_000, 48_000), Some(40.0));
        // Behind the server: negative.
        c.record_playhead(9, 9_600);
        assert_eq!(c.observe_arrival(9, 4_800, 480_000, 48_000), Some(-100.0));
        // A tick it no longer remembers (overwritten 512 ticks later) is ignored.
        c.record_playhead(9 + 512, 0);
        assert_eq!(c.observe_arrival(9, 0, 480_000, 48_000), None);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.9), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
