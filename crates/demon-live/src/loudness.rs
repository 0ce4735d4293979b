//! The live loudness meter and matcher (issue 12, item 4; DEMON's LUFS matcher keeps
//! generations at the source's loudness): EBU R128 short-term and momentary loudness of what
//! the session plays, and, with the `loudness_match` knob on, a slow gain that takes it to the
//! source's integrated loudness (or to the `target_lufs` knob without a source).
//!
//! The matcher aims the loudness of the last [`MATCH_WINDOW_SECONDS`] played (the short-term
//! loudness sampled once a second, averaged as energy with BS.1770's gates: an integrated
//! loudness over a sliding window) at the target, and moves its gain at most
//! [`MATCH_SLEW_DB_PER_SECOND`]: a matcher, not a compressor, it evens out generations that
//! come out louder or softer than the source, not the song's own dynamics. The meter reads the
//! played block before the gain, so the gain never chases itself. The gain is applied to the
//! block the session plays (its sinks: the sound card, recordings) and sent to the pages with
//! the tick statistics, which apply it to their own copy of the loop. Everything depends only on
//! the played samples, so a replay computes the same gains.

use demon_audio::analysis::LoudnessMeter;
use demon_audio::analysis::loudness::MAX_MATCH_GAIN_DB;
use serde::{Deserialize, Serialize};

/// Fastest change of the matcher's gain, in dB per second.
pub const MATCH_SLEW_DB_PER_SECOND: f64 = 1.5;

/// The span of played audio whose loudness the matcher takes to the target.
pub const MATCH_WINDOW_SECONDS: usize = 20;

/// What the meter and the matcher report (`state.loudness`, `stats.loudness`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoudnessReport {
    /// Loudness of the last 400 ms and 3 s played, before the gain (LUFS; `None` in silence).
    pub momentary_lufs: Option<f64>,
    pub short_term_lufs: Option<f64>,
    /// Loudness of the last [`MATCH_WINDOW_SECONDS`] played, before the gain: what the matcher
    /// takes to the target.
    pub window_lufs: Option<f64>,
    /// The gain applied to what is played, in dB (0 with the matcher off and settled).
    pub gain_db: f64,
    /// What the matcher aims at: the source's integrated loudness, else `target_lufs`.
    pub target_lufs: Option<f64>,
    pub matching: bool,
}

/// The meter and the matcher's gain, carried from tick to tick.
pub struct LoudnessTracker {
    meter: Option<LoudnessMeter>,
    sample_rate: usize,
    /// Samples fed since the last once-a-second reading.
    since_reading: usize,
    /// The last readings of the short-term loudness, as mean-square energies.
    readings: std::collections::VecDeque<f64>,
    report: LoudnessReport,
}

/// Loudness of short-term readings (mean-square energies) pooled with BS.1770's gates: the
/// −70 LUFS absolute gate, then −10 LU under the mean of what passed it.
fn gated_lufs(energies: &std::collections::VecDeque<f64>) -> Option<f64> {
    let lufs = |e: f64| -0.691 + 10.0 * e.log10();
    let mean = |it: &mut dyn Iterator<Item = f64>| {
        let (n, sum) = it.fold((0usize, 0.0), |(n, s), e| (n + 1, s + e));
        (n > 0).then(|| sum / n as f64)
    };
    let loud = |e: &&f64| lufs(**e) > -70.0;
    let ungated = mean(&mut energies.iter().filter(loud).copied())?;
    let gate = lufs(ungated) - 10.0;
    mean(
        &mut energies
            .iter()
            .filter(loud)
            .filter(|e| lufs(**e) > gate)
            .copied(),
    )
    .map(lufs)
}

impl LoudnessTracker {
    /// A stereo meter at `sample_rate` (none, and so no matching, if the meter cannot be made).
    pub fn new(sample_rate: u32) -> Self {
        Self {
            meter: LoudnessMeter::short_term(2, sample_rate).ok(),
            sample_rate: sample_rate as usize,
            since_reading: 0,
            readings: std::collections::VecDeque::with_capacity(MATCH_WINDOW_SECONDS + 1),
            report: LoudnessReport::default(),
        }
    }

    pub fn report(&self) -> LoudnessReport {
        self.report
    }

    /// Measure `played` (a block of `seconds`), move the gain toward `target_lufs` when
    /// matching (toward 0 dB otherwise), and apply it to `played` in place.
    pub fn process(
        &mut self,
        played: &mut [Vec<f32>; 2],
        seconds: f64,
        matching: bool,
        target_lufs: f64,
    ) {
        if let Some(m) = self.meter.as_mut()
            && !played[0].is_empty()
        {
            let [l, r] = &*played;
            if m.add_planar(&[l.as_slice(), r.as_slice()]).is_ok() {
                self.report.momentary_lufs = m.momentary_lufs();
                self.report.short_term_lufs = m.short_term_lufs();
            }
            self.since_reading += l.len();
            if self.since_reading >= self.sample_rate {
                self.since_reading -= self.sample_rate;
                // Silence reads as no energy, which the absolute gate leaves out.
                let e = self
                    .report
                    .short_term_lufs
                    .map_or(0.0, |v| 10f64.powf((v + 0.691) / 10.0));
                if self.readings.len() == MATCH_WINDOW_SECONDS {
                    self.readings.pop_front();
                }
                self.readings.push_back(e);
                self.report.window_lufs = gated_lufs(&self.readings);
            }
        }
        self.report.matching = matching;
        self.report.target_lufs = Some(target_lufs);
        let want = match (matching, self.report.window_lufs) {
            (true, Some(now)) => (target_lufs - now).clamp(-MAX_MATCH_GAIN_DB, MAX_MATCH_GAIN_DB),
            // Matching but nothing measured yet (silence): hold the gain.
            (true, None) => self.report.gain_db,
            (false, _) => 0.0,
        };
        let step = MATCH_SLEW_DB_PER_SECOND * seconds;
        let g = self.report.gain_db;
        self.report.gain_db = if (want - g).abs() <= step {
            want
        } else {
            g + step * (want - g).signum()
        };
        if self.report.gain_db != 0.0 {
            let k = 10f64.powf(self.report.gain_db / 20.0) as f32;
            for ch in played.iter_mut() {
                for v in ch.iter_mut() {
                    *v *= k;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(amp: f32, n: usize) -> [Vec<f32>; 2] {
        let v: Vec<f32> = (0..n)
            .map(|i| amp * (i as f32 * 997.0 / 48_000.0 * std::f32::consts::TAU).sin())
            .collect();
        [v.clone(), v]
    }

    #[test]
    fn the_matcher_moves_slowly_to_the_target_and_off_gives_the_samples_back() {
        let mut t = LoudnessTracker::new(48_000);
        let n = 1920;
        let dt = n as f64 / 48_000.0;
        // Off: the samples pass untouched (bit for bit), the meter reads them.
        let mut b = block(0.1, n);
        let before = b.clone();
        t.process(&mut b, dt, false, -14.0);
        assert_eq!(b, before);
        for _ in 0..100 {
            t.process(&mut block(0.1, n), dt, false, -14.0);
        }
        let loud = t.report().short_term_lufs.expect("measured");
        assert!(loud < -17.0, "{loud}");
        // On: the gain rises at 1.5 dB/s, then settles at target − the window's loudness.
        t.process(&mut block(0.1, n), dt, true, -14.0);
        assert!((t.report().gain_db - MATCH_SLEW_DB_PER_SECOND * dt).abs() < 1e-9);
        for _ in 0..25 * 30 {
            t.process(&mut block(0.1, n), dt, true, -14.0);
        }
        let r = t.report();
        let now = r.window_lufs.unwrap();
        assert!(
            (now - r.short_term_lufs.unwrap()).abs() < 0.01,
            "a steady tone: {r:?}"
        );
        assert!((r.gain_db - (-14.0 - now)).abs() < 1e-6, "{r:?}");
        // The applied gain takes the block to the target.
        let mut b = block(0.1, n);
        t.process(&mut b, dt, true, -14.0);
        let k = b[0][100] / block(0.1, n)[0][100];
        assert!((20.0 * (k as f64).log10() - t.report().gain_db).abs() < 1e-3);
        // Off again: back toward 0 dB at the same rate.
        let g = t.report().gain_db;
        t.process(&mut block(0.1, n), dt, false, -14.0);
        assert!((t.report().gain_db - (g - MATCH_SLEW_DB_PER_SECOND * dt)).abs() < 1e-9);
    }
}
