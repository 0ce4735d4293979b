//! What a session measured on its source (issue 12, item 5; DEMON's `AudioInfo`, demon.md §9):
//! tempo, key, duration and loudness of every loaded source, shown in the state and offered to
//! the conditioner as hints for the tempo and key a prompt leaves open.
//!
//! The analysis runs where the source is prepared (beside the ticks in a live session) on the
//! audio the source's latent decodes to, not on the uploaded samples: a replay, which only has
//! the recorded latent, measures the same figures and so conditions the same way.

use demon_audio::analysis::{estimate_key, estimate_tempo, integrated_lufs};
use demon_engine::{Audio, SourceHints};
use serde::{Deserialize, Serialize};

/// Tempo and key are measured on the first this many seconds (a whole 20-minute upload would
/// cost as much as its encode); duration and loudness on the whole source.
pub const ANALYSIS_MAX_SECONDS: f64 = 120.0;

/// A tempo whose comb score is under this has too little pulse to offer as a hint
/// (`demon_audio::analysis::tempo`: clear beats score 0.3 and more).
pub const TEMPO_HINT_MIN_STRENGTH: f64 = 0.15;

/// A key is offered as a hint only when it beats the runner-up (usually the relative or the
/// dominant key) by this much correlation: a near tie would steer the harmony by a coin toss.
pub const KEY_HINT_MIN_MARGIN: f64 = 0.02;

/// What [`SourceAnalysis::of`] measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceAnalysis {
    pub duration_seconds: f64,
    /// The span tempo and key were measured on (at most [`ANALYSIS_MAX_SECONDS`]).
    pub analysed_seconds: f64,
    /// `None` when there is no pulse.
    pub bpm: Option<f64>,
    /// The tempo's comb score in [−1, 1] (how clear the beat is).
    pub bpm_strength: Option<f64>,
    /// "A minor"; `None` when there is no pitched content.
    pub key: Option<String>,
    /// Correlation of the key's profile with the chroma, and of the runner-up's.
    pub key_correlation: Option<f64>,
    pub key_runner_up: Option<String>,
    pub key_runner_up_correlation: Option<f64>,
    /// Integrated loudness (EBU R128); `None` for silence.
    pub integrated_lufs: Option<f64>,
    pub peak: f32,
}

impl SourceAnalysis {
    /// Tempo and key of `audio`'s start, its duration and loudness.
    pub fn of(audio: &Audio) -> Self {
        let max = (ANALYSIS_MAX_SECONDS * audio.sample_rate as f64) as usize;
        let cut;
        let head = if audio.frames() > max {
            cut = Audio {
                sample_rate: audio.sample_rate,
                channels: audio.channels.iter().map(|c| c[..max].to_vec()).collect(),
            };
            &cut
        } else {
            audio
        };
        let tempo = estimate_tempo(head);
        let key = estimate_key(head);
        Self {
            duration_seconds: audio.seconds(),
            analysed_seconds: head.seconds(),
            bpm: tempo.map(|t| (t.bpm * 100.0).round() / 100.0),
            bpm_strength: tempo.map(|t| t.strength),
            key: key.map(|k| k.key.to_string()),
            key_correlation: key.map(|k| k.correlation),
            key_runner_up: key.map(|k| k.runner_up.to_string()),
            key_runner_up_correlation: key.map(|k| k.runner_up_correlation),
            integrated_lufs: integrated_lufs(audio),
            peak: audio.peak(),
        }
    }

    /// The tempo (to the nearest BPM) and key worth offering to a conditioner: a clear beat, a
    /// key that beats its runner-up ([`TEMPO_HINT_MIN_STRENGTH`], [`KEY_HINT_MIN_MARGIN`]).
    pub fn hints(&self) -> SourceHints {
        let bpm = self
            .bpm
            .zip(self.bpm_strength)
            .filter(|(b, s)| *s >= TEMPO_HINT_MIN_STRENGTH && (20.0..=400.0).contains(b))
            // Whole BPM: the estimate is good to about 1 %, and tempo metadata is integral
            // (ACE-Step's metas; a sketch library at 123.97 BPM would only drift from 124).
            .map(|(b, _)| b.round() as f32);
        let key = match (self.key_correlation, self.key_runner_up_correlation) {
            (Some(a), Some(b)) if a - b >= KEY_HINT_MIN_MARGIN => self.key.clone(),
            _ => None,
        };
        SourceHints { bpm, key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(bpm: Option<(f64, f64)>, key: Option<(f64, f64)>) -> SourceAnalysis {
        SourceAnalysis {
            duration_seconds: 10.0,
            analysed_seconds: 10.0,
            bpm: bpm.map(|b| b.0),
            bpm_strength: bpm.map(|b| b.1),
            key: key.map(|_| "A minor".into()),
            key_correlation: key.map(|k| k.0),
            key_runner_up: key.map(|_| "C major".into()),
            key_runner_up_correlation: key.map(|k| k.1),
            integrated_lufs: Some(-14.0),
            peak: 0.9,
        }
    }

    #[test]
    fn only_clear_figures_become_hints() {
        let h = analysis(Some((117.8, 0.4)), Some((0.8, 0.7))).hints();
        assert_eq!((h.bpm, h.key.as_deref()), (Some(118.0), Some("A minor")));
        // A weak beat and a near tie between relative keys are not offered.
        let h = analysis(Some((118.0, 0.05)), Some((0.80, 0.79))).hints();
        assert_eq!((h.bpm, h.key), (None, None));
        let h = analysis(None, None).hints();
        assert_eq!(h, SourceHints::default());
    }

    #[test]
    fn a_clicked_pulse_is_measured_on_the_head_of_a_long_source() {
        // 150 s of clicks at 100 BPM: tempo from the first 120 s, duration of the whole.
        let rate = 8_000u32;
        let n = 150 * rate as usize;
        let period = (rate as f64 * 60.0 / 100.0) as usize;
        let ch: Vec<f32> = (0..n)
            .map(|i| if i % period < 80 { 0.8 } else { 0.0 })
            .collect();
        let audio = Audio::new(rate, vec![ch.clone(), ch]).unwrap();
        let a = SourceAnalysis::of(&audio);
        assert!((a.duration_seconds - 150.0).abs() < 1e-9);
        assert!((a.analysed_seconds - ANALYSIS_MAX_SECONDS).abs() < 1e-9);
        let bpm = a.bpm.expect("a tempo");
        assert!((bpm - 100.0).abs() < 1.0, "{bpm}");
        assert_eq!(a.hints().bpm, Some(bpm.round() as f32));
    }
}
