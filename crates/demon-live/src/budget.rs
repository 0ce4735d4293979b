//! The real-time contract of a live session (issue 10 item 2): every tick must produce one
//! tick of audio in at most the time that audio takes to play. The session measures each tick's
//! cost (denoising plus decoding) against that budget; when it falls behind, the degrade policy
//! lowers the ring depth one step at a time (fewer generations in flight, so less work per
//! tick), and gives the depth back one step at a time once a step more would fit again.
//!
//! The policy is a pure function of the measured costs: the cap it sets is recorded in the
//! session file's clock lines, so a replay follows the same depths without measuring anything.
//! docs/architecture.md ("Real time is a contract") describes it for performers.

use serde::{Deserialize, Serialize};

/// Smoothing of the load: the weight of the newest tick (the indicator follows within 2–3
/// ticks, about 0.1 s, while one slow tick alone does not trip it for long).
const LOAD_SMOOTHING: f32 = 0.3;
/// Overloaded once the smoothed load rises above this…
const OVERLOAD: f32 = 1.0;
/// …and until it has stayed below this for [`RECOVERED_AFTER_TICKS`] ticks in a row: a load
/// hovering at the edge (a loaded machine) would otherwise flip the indicator, and the server's
/// notices, several times a second.
const RECOVERED_BELOW: f32 = 0.9;
/// One second at 25 ticks per second.
const RECOVERED_AFTER_TICKS: u32 = 25;
/// A depth step down needs this many ticks in a row over budget: a single expensive tick (a
/// new source decoded whole) is not a trend.
const SUSTAINED_OVER_TICKS: u32 = 3;
/// A step back up needs the load predicted with one more generation in flight under this…
const RESTORE_BELOW: f32 = 0.8;
/// …for this many ticks in a row (one second at 25 ticks per second).
const RESTORE_AFTER_TICKS: u32 = 25;

/// What a session reports about its real-time budget (`state.realtime`, `stats.realtime`,
/// `/api/health`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RealtimeReport {
    /// The audio one tick plays, in milliseconds: the time a tick may take.
    pub budget_ms: f32,
    /// Smoothed (tick + decode time) / budget: above 1 the session falls behind real time.
    pub load: f32,
    /// The smoothed load is over 1: the session falls behind real time.
    pub overloaded: bool,
    /// The ring depth the degrade policy allows now; `None`: the performer's depth runs.
    pub depth_cap: Option<usize>,
}

/// The budget meter and the degrade policy of one session.
#[derive(Clone, Debug)]
pub struct RealtimeBudget {
    budget_ms: f32,
    /// Smoothed share of the budget spent denoising (the pipeline tick)…
    denoise_load: f32,
    /// …and decoding: the two parts of [`RealtimeReport::load`], kept apart because only the
    /// first grows with the generations in flight.
    decode_load: f32,
    measured: bool,
    overloaded: bool,
    /// Consecutive ticks whose own cost was over budget.
    over_ticks: u32,
    /// Consecutive ticks under [`RECOVERED_BELOW`] while overloaded.
    recovered_ticks: u32,
    /// Consecutive ticks in which one more generation in flight would have fit.
    calm_ticks: u32,
}

impl RealtimeBudget {
    pub fn new(budget_ms: f32) -> Self {
        Self {
            budget_ms,
            denoise_load: 0.0,
            decode_load: 0.0,
            measured: false,
            overloaded: false,
            over_ticks: 0,
            recovered_ticks: 0,
            calm_ticks: 0,
        }
    }

    pub fn report(&self, depth_cap: Option<usize>) -> RealtimeReport {
        RealtimeReport {
            budget_ms: self.budget_ms,
            load: self.load(),
            overloaded: self.overloaded,
            depth_cap,
        }
    }

    fn load(&self) -> f32 {
        self.denoise_load + self.decode_load
    }

    /// Take one tick's cost: `denoise_ms` in the pipeline tick, `decode_ms` decoding its
    /// slices. `active_slots` ran in it, `depth` is the performer's depth and `cap` the
    /// policy's current cap. With `degrade`, returns the new cap when the policy moves
    /// (`Some(None)`: the performer's depth again).
    pub fn observe(
        &mut self,
        denoise_ms: f32,
        decode_ms: f32,
        active_slots: usize,
        depth: usize,
        cap: Option<usize>,
        degrade: bool,
    ) -> Option<Option<usize>> {
        let budget = self.budget_ms.max(f32::MIN_POSITIVE);
        let (denoise, decode) = (denoise_ms / budget, decode_ms / budget);
        let raw = denoise + decode;
        let smooth = |old: f32, new: f32| LOAD_SMOOTHING * new + (1.0 - LOAD_SMOOTHING) * old;
        if self.measured {
            self.denoise_load = smooth(self.denoise_load, denoise);
            self.decode_load = smooth(self.decode_load, decode);
        } else {
            (self.denoise_load, self.decode_load) = (denoise, decode);
        }
        self.measured = true;
        let load = self.load();
        if self.overloaded {
            self.recovered_ticks = if load < RECOVERED_BELOW {
                self.recovered_ticks + 1
            } else {
                0
            };
            self.overloaded = self.recovered_ticks < RECOVERED_AFTER_TICKS;
        } else {
            self.overloaded = load > OVERLOAD;
            self.recovered_ticks = 0;
        }
        self.over_ticks = if raw > 1.0 { self.over_ticks + 1 } else { 0 };
        if !degrade {
            return None;
        }
        // The performer chose a depth at or under the cap: nothing is held back any more.
        let lifted = cap.is_some_and(|c| c >= depth);
        let cap = cap.filter(|c| *c < depth);
        let running = cap.unwrap_or(depth);
        // Step down only once the ring has shrunk to the last step (slots in flight finish
        // their trajectories), so each step's effect is seen before the next.
        if self.overloaded
            && self.over_ticks >= SUSTAINED_OVER_TICKS
            && running > 1
            && active_slots <= running
        {
            self.over_ticks = 0;
            self.calm_ticks = 0;
            return Some(Some(running - 1));
        }
        let Some(c) = cap else {
            self.calm_ticks = 0;
            return lifted.then_some(None);
        };
        // Denoising cost grows with the generations in flight; decoding does not (it covers the
        // same window whatever the depth). Scaling the whole load instead would keep a session
        // whose decode dominates capped for ever (at depth 1, a load of 0.45 would predict 0.9).
        let slots = active_slots.max(1) as f32;
        let one_more = self.decode_load + self.denoise_load * (slots + 1.0) / slots;
        if !self.overloaded && one_more < RESTORE_BELOW {
            self.calm_ticks += 1;
        } else {
            self.calm_ticks = 0;
        }
        if self.calm_ticks >= RESTORE_AFTER_TICKS {
            self.calm_ticks = 0;
            return Some((c + 1 < depth).then_some(c + 1));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `ticks` ticks costing `per_slot_ms` per slot in flight; slots follow the cap at
    /// once. Returns the caps seen.
    fn drive(
        b: &mut RealtimeBudget,
        cap: &mut Option<usize>,
        depth: usize,
        per_slot_ms: f32,
        ticks: usize,
    ) -> Vec<Option<usize>> {
        let mut seen = Vec::new();
        for _ in 0..ticks {
            let slots = cap.unwrap_or(depth).min(depth);
            if let Some(next) = b.observe(per_slot_ms * slots as f32, 0.0, slots, depth, *cap, true)
            {
                *cap = next;
                seen.push(next);
            }
        }
        seen
    }

    #[test]
    fn lowers_one_step_at_a_time_then_restores() {
        let mut b = RealtimeBudget::new(40.0);
        let mut cap = None;
        // 8 slots at 11 ms each: 88 ms a tick, over twice the budget; 4 slots (44 ms) are
        // still over, 3 (33 ms) fit.
        let down = drive(&mut b, &mut cap, 8, 11.0, 200);
        assert_eq!(down, vec![Some(7), Some(6), Some(5), Some(4), Some(3)]);
        assert!(!b.report(cap).overloaded, "3 slots (33 ms) fit in 40 ms");
        // Cheaper ticks (2 ms a slot): the depth comes back, one step per second of calm.
        let up = drive(&mut b, &mut cap, 8, 2.0, 200);
        assert_eq!(up, vec![Some(4), Some(5), Some(6), Some(7), None]);
        assert_eq!(cap, None);
    }

    #[test]
    fn one_slow_tick_is_not_a_trend_and_off_means_off() {
        let mut b = RealtimeBudget::new(40.0);
        assert_eq!(b.observe(200.0, 0.0, 4, 4, None, true), None);
        assert!(b.report(None).overloaded, "the indicator shows at once");
        for _ in 0..40 {
            assert_eq!(b.observe(10.0, 0.0, 4, 4, None, true), None);
        }
        assert!(
            !b.report(None).overloaded,
            "a second of fitting ticks ends it"
        );
        let mut off = RealtimeBudget::new(40.0);
        for _ in 0..50 {
            assert_eq!(off.observe(200.0, 0.0, 4, 4, None, false), None);
        }
        assert!(off.report(None).overloaded && off.report(None).load > 4.0);
    }

    #[test]
    fn a_load_at_the_edge_does_not_flip_the_indicator() {
        let mut b = RealtimeBudget::new(40.0);
        b.observe(48.0, 0.0, 1, 1, None, false);
        assert!(b.report(None).overloaded);
        // Alternating just over and just under the budget: the smoothed load stays between
        // the two thresholds, so the flag holds.
        for i in 0..100 {
            let cost = if i % 2 == 0 { 42.0 } else { 36.0 };
            b.observe(cost, 0.0, 1, 1, None, false);
            assert!(
                b.report(None).overloaded,
                "tick {i}: load {}",
                b.report(None).load
            );
        }
        // Under 0.9 but not yet for a second: still overloaded; then it ends.
        for _ in 0..20 {
            b.observe(30.0, 0.0, 1, 1, None, false);
        }
        assert!(b.report(None).overloaded, "fewer than 25 fitting ticks");
        for _ in 0..20 {
            b.observe(30.0, 0.0, 1, 1, None, false);
        }
        assert!(
            !b.report(None).overloaded,
            "0.75 of the budget is back in real time"
        );
        // And it takes a load over 1 again, not 0.95, to come back.
        for _ in 0..50 {
            b.observe(38.0, 0.0, 1, 1, None, false);
        }
        assert!(!b.report(None).overloaded);
    }

    #[test]
    fn the_performer_lowering_the_depth_lifts_the_cap() {
        let mut b = RealtimeBudget::new(40.0);
        assert_eq!(b.observe(10.0, 0.0, 2, 2, Some(3), true), Some(None));
    }

    #[test]
    fn a_decode_that_dominates_does_not_keep_the_depth_capped() {
        // At depth 1 a tick costs 4 ms of denoising and 14 ms of decoding (load 0.45); the
        // decode does not grow with the depth, so 2, 3 and 4 slots (22, 26, 30 ms) fit.
        let mut b = RealtimeBudget::new(40.0);
        let mut cap = Some(1);
        let mut seen = Vec::new();
        for _ in 0..200 {
            let slots = cap.unwrap_or(4).min(4);
            if let Some(next) = b.observe(4.0 * slots as f32, 14.0, slots, 4, cap, true) {
                cap = next;
                seen.push(next);
            }
        }
        assert_eq!(seen, vec![Some(2), Some(3), None]);
        // The same load all spent denoising predicts 0.9 for a second slot: the cap holds.
        let mut b = RealtimeBudget::new(40.0);
        for _ in 0..200 {
            assert_eq!(b.observe(18.0, 0.0, 1, 4, Some(1), true), None);
        }
    }
}
