//! Knob-to-ear latency (issue 10, item 1): control received by the server → first sample
//! played at a client's playhead that reflects it.
//!
//! The accounting is split where the knowledge is:
//! - [`ReflectTracker`] (in the core, deterministic): for each applied control, the first
//!   finished latent that carries it (by its propagation class: a shared-lane or weights change
//!   is carried by the first latent that ran a step after it; a per-slot, prompt, source or
//!   structural change by the first latent *submitted* after it), then the first loop slice
//!   (tick, sample range) decoded from that latent or a newer one;
//! - the client: the time its playhead first plays a sample of that slice (docs/protocol.md,
//!   `reflects` / `heard`);
//! - [`KnobToEar`]: received and played instants on the server's monotonic clock, giving the
//!   per-class figures (last, median, p90) that `/api/state`, `stats` and the UI show.
//!
//! [`simulated_ms`] is the same accounting with a simulated client playing exactly at the
//! server's playhead, paced to the tick clock (what `demon bench` reports).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::control::{ControlMessage, PropagationClass};
use crate::lead::quantile;

/// What a control's latency is reported under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarClass {
    /// Shared per-step knobs and curves (velocity scale, guidance, ...): the lane.
    SharedLane,
    /// Per-slot knobs (denoise, seed, shift, ...): fixed at submission.
    PerSlot,
    /// A prompt change (per slot, through a new conditioning).
    Prompt,
    /// A new source.
    Source,
    /// LoRA strengths: the first forward after the swap.
    Weights,
    /// Steps, depth: new slots.
    Structural,
}

impl EarClass {
    pub const ALL: [EarClass; 6] = [
        EarClass::SharedLane,
        EarClass::PerSlot,
        EarClass::Prompt,
        EarClass::Source,
        EarClass::Weights,
        EarClass::Structural,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EarClass::SharedLane => "shared_lane",
            EarClass::PerSlot => "per_slot",
            EarClass::Prompt => "prompt",
            EarClass::Source => "source",
            EarClass::Weights => "weights",
            EarClass::Structural => "structural",
        }
    }

    /// The class of what a message changes in the sound; `None` for transport (seek, play,
    /// loop band, slew), which is heard by moving the playhead, not through the ring.
    pub fn of(msg: &ControlMessage) -> Option<Self> {
        Some(match msg {
            ControlMessage::SetPrompt { .. } => EarClass::Prompt,
            ControlMessage::SetSource { .. } => EarClass::Source,
            ControlMessage::SetLoopBand { .. }
            | ControlMessage::ClearLoopBand
            | ControlMessage::Seek { .. }
            | ControlMessage::SetPlaying { .. }
            | ControlMessage::SetSlew { .. } => return None,
            other => match other.class() {
                PropagationClass::SharedPerStep => EarClass::SharedLane,
                PropagationClass::PerSlot => EarClass::PerSlot,
                PropagationClass::GlobalWeights => EarClass::Weights,
                PropagationClass::Structural => EarClass::Structural,
            },
        })
    }

    /// Carried by a latent that ran any step after the change (not only one submitted after).
    fn reaches_in_flight(self) -> bool {
        matches!(self, EarClass::SharedLane | EarClass::Weights)
    }
}

/// A control waiting for the latent, then the slice, that carries it.
#[derive(Clone, Debug)]
struct Pending {
    id: u64,
    class: EarClass,
    /// The pipeline tick the control was applied before.
    since_tick: u64,
    /// The harvest version of the first latent that carries it.
    version: Option<u64>,
}

/// The first loop slice that carries a control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reflected {
    pub id: u64,
    pub class: EarClass,
    pub tick: u64,
    pub start_sample: u64,
    pub samples: u64,
}

/// Controls not yet in a slice are forgotten past this many (a stopped session).
const MAX_PENDING: usize = 256;

/// Which slice first carries each control (exact tick and sample arithmetic, no clock).
#[derive(Clone, Debug, Default)]
pub struct ReflectTracker {
    pending: VecDeque<Pending>,
}

impl ReflectTracker {
    /// Control `id` of `class` was applied before pipeline tick `tick`.
    pub fn track(&mut self, id: u64, class: EarClass, tick: u64) {
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            id,
            class,
            since_tick: tick,
            version: None,
        });
    }

    /// A latent of this song became harvest version `version`; it was submitted at pipeline
    /// tick `submitted_tick` and ran its last step in `finished_tick`.
    pub fn harvested(&mut self, submitted_tick: u64, finished_tick: u64, version: u64) {
        for p in self.pending.iter_mut().filter(|p| p.version.is_none()) {
            let carried = if p.class.reaches_in_flight() {
                finished_tick >= p.since_tick
            } else {
                submitted_tick >= p.since_tick
            };
            if carried {
                p.version = Some(version);
            }
        }
    }

    /// The loop got `[start_sample, start_sample + samples)` decoded from harvest version
    /// `version` in tick `tick`: every control a latent up to that version carries is reflected
    /// there (appended to `out`).
    pub fn patched(
        &mut self,
        version: u64,
        tick: u64,
        start_sample: u64,
        samples: u64,
        out: &mut Vec<Reflected>,
    ) {
        self.pending.retain(|p| match p.version {
            Some(v) if v <= version => {
                out.push(Reflected {
                    id: p.id,
                    class: p.class,
                    tick,
                    start_sample,
                    samples,
                });
                false
            }
            _ => true,
        });
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// One class's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassLatency {
    /// Controls measured so far.
    pub count: u64,
    pub last_ms: f64,
    /// Median and p90 over the last [`RECENT`] measured.
    pub median_ms: f64,
    pub p90_ms: f64,
    /// The last [`RECENT`] values, oldest first.
    pub recent_ms: Vec<f64>,
}

/// Values kept per class for the running quantiles.
pub const RECENT: usize = 32;
/// Controls waiting for a client's report are forgotten past this many.
const MAX_AWAITED: usize = 1024;

/// Received and played instants → per-class figures. The first report of a control counts;
/// later ones (other pages) are ignored.
#[derive(Clone, Debug, Default)]
pub struct KnobToEar {
    awaited: VecDeque<(u64, EarClass, Instant)>,
    classes: BTreeMap<EarClass, (u64, VecDeque<f64>)>,
}

impl KnobToEar {
    /// Control `id` was received at `at`.
    pub fn received(&mut self, id: u64, class: EarClass, at: Instant) {
        if self.awaited.len() == MAX_AWAITED {
            self.awaited.pop_front();
        }
        self.awaited.push_back((id, class, at));
    }

    /// A client first played a sample reflecting `id` at `played`: the latency in ms, once.
    pub fn heard(&mut self, id: u64, played: Instant) -> Option<(EarClass, f64)> {
        let i = self.awaited.iter().position(|(c, _, _)| *c == id)?;
        let (_, class, at) = self.awaited.remove(i)?;
        let ms = signed_ms(played, at);
        let (count, recent) = self.classes.entry(class).or_default();
        *count += 1;
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(ms);
        Some((class, ms))
    }

    /// The figures of every class measured so far, by class name.
    pub fn report(&self) -> BTreeMap<String, ClassLatency> {
        self.classes
            .iter()
            .map(|(class, (count, recent))| {
                let mut sorted: Vec<f64> = recent.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                (
                    class.name().to_string(),
                    ClassLatency {
                        count: *count,
                        last_ms: recent.back().copied().unwrap_or(0.0),
                        median_ms: quantile(&sorted, 0.5),
                        p90_ms: quantile(&sorted, 0.9),
                        recent_ms: recent.iter().copied().collect(),
                    },
                )
            })
            .collect()
    }
}

/// `a − b` in milliseconds, negative when `a` is earlier.
pub fn signed_ms(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(b.duration_since(a).as_secs_f64() * 1000.0),
    }
}

/// Knob-to-ear for a simulated client that plays exactly at the server's playhead, paced to
/// the tick clock (tick `k` starts at `k · samples_per_tick` samples of session time, its
/// playhead before it plays is `playhead_at_slice`). A control received at `received_sample`
/// of session time is heard when that client first plays `slice_start` (or at once, when the
/// slice lands with the playhead already inside it: counted late).
///
/// Returns `(ms, late)`.
pub fn simulated_ms(
    received_sample: u64,
    slice_tick: u64,
    samples_per_tick: u64,
    playhead_at_slice: u64,
    slice_start: u64,
    loop_span: u64,
    sample_rate: u32,
) -> (f64, bool) {
    let tick_start = slice_tick * samples_per_tick;
    // Distance from the playhead forward to the slice, on the loop.
    let ahead = (slice_start % loop_span + loop_span - playhead_at_slice % loop_span) % loop_span;
    // The slice reaches the client at the end of its tick: with the playhead inside or past it
    // (within the tick's travel) it is late and heard at arrival.
    let late = ahead < samples_per_tick;
    let heard = if late {
        tick_start + samples_per_tick
    } else {
        tick_start + ahead
    };
    let ms = (heard as f64 - received_sample as f64) * 1000.0 / sample_rate as f64;
    (ms, late)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn classes_follow_the_catalog() {
        let knob = |name: &str| ControlMessage::SetKnob {
            name: name.into(),
            value: 0.5,
        };
        assert_eq!(
            EarClass::of(&knob("velocity_scale")),
            Some(EarClass::SharedLane)
        );
        assert_eq!(EarClass::of(&knob("seed")), Some(EarClass::PerSlot));
        assert_eq!(EarClass::of(&knob("denoise")), Some(EarClass::PerSlot));
        assert_eq!(
            EarClass::of(&ControlMessage::SetPrompt {
                prompt: Some("jazz".into()),
                prompt_b: None,
                negative: None,
                bpm: None,
                key: None,
                lyrics: None,
                time_signature: None,
                language: None,
                task: None,
            }),
            Some(EarClass::Prompt)
        );
        assert_eq!(EarClass::of(&ControlMessage::Seek { seconds: 1.0 }), None);
    }

    #[test]
    fn shared_lane_is_carried_by_the_next_finish_per_slot_by_the_next_submission() {
        let mut t = ReflectTracker::default();
        t.track(1, EarClass::SharedLane, 10);
        t.track(2, EarClass::PerSlot, 10);
        let mut out = Vec::new();
        // A latent submitted at tick 3 finishing at tick 9: before both changes.
        t.harvested(3, 9, 5);
        t.patched(5, 9, 0, 100, &mut out);
        assert!(out.is_empty());
        // Submitted at 4, finished at 10 (its last step ran after the change): carries the
        // shared-lane change only.
        t.harvested(4, 10, 6);
        assert!(out.is_empty(), "nothing until a slice is decoded");
        t.patched(6, 10, 19_200, 17_280, &mut out);
        assert_eq!(
            out,
            vec![Reflected {
                id: 1,
                class: EarClass::SharedLane,
                tick: 10,
                start_sample: 19_200,
                samples: 17_280
            }]
        );
        // The per-slot change waits for a latent submitted at tick 10 or later.
        out.clear();
        t.harvested(9, 15, 7);
        t.patched(7, 15, 0, 10, &mut out);
        assert!(out.is_empty());
        t.harvested(10, 16, 8);
        // A slice decoded from an older version does not carry it...
        t.patched(7, 16, 0, 10, &mut out);
        assert!(out.is_empty());
        // ...one from that version or newer does, once.
        t.patched(9, 17, 1_920, 17_280, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].id, out[0].tick, out[0].start_sample),
            (2, 17, 1_920)
        );
        t.patched(9, 18, 0, 10, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn the_first_report_counts_and_quantiles_are_exact() {
        let t0 = Instant::now();
        let mut e = KnobToEar::default();
        for id in 0..10u64 {
            e.received(id, EarClass::SharedLane, t0);
        }
        for id in 0..10u64 {
            let heard = t0 + Duration::from_millis(100 + 10 * id);
            let (class, ms) = e.heard(id, heard).unwrap();
            assert_eq!(class, EarClass::SharedLane);
            assert!((ms - (100.0 + 10.0 * id as f64)).abs() < 1e-6);
        }
        assert_eq!(e.heard(3, t0), None, "a second report of one control");
        let r = &e.report()["shared_lane"];
        assert_eq!(r.count, 10);
        assert_eq!(r.recent_ms.len(), 10);
        assert!((r.median_ms - 140.0).abs() < 1e-6, "{r:?}");
        assert!((r.p90_ms - 180.0).abs() < 1e-6, "{r:?}");
        assert!((r.last_ms - 190.0).abs() < 1e-6);
        // Played before received (a client clock error) is negative, not a panic.
        e.received(99, EarClass::PerSlot, t0 + Duration::from_millis(5));
        assert!((e.heard(99, t0).unwrap().1 + 5.0).abs() < 1e-6);
    }

    #[test]
    fn simulated_client_arithmetic() {
        // 48 kHz, 1920 samples a tick. Received at the start of tick 100 (sample 192 000);
        // carried by the slice of tick 101 starting 3 frames (5760 samples) past the playhead:
        // heard at 101 · 1920 + 5760 = 199 680, i.e. 160 ms after.
        let (ms, late) = simulated_ms(192_000, 101, 1920, 700_000, 705_760, 2_880_000, 48_000);
        assert_eq!((ms, late), (160.0, false));
        // Across the loop's end: playhead 2 879 040, slice at 960 → 1920 ahead: 1 tick + 40 ms.
        let (ms, late) = simulated_ms(192_000, 101, 1920, 2_879_040, 960, 2_880_000, 48_000);
        assert_eq!((ms, late), (80.0, false));
        // A slice starting inside the tick's travel lands late, heard when it arrives.
        let (ms, late) = simulated_ms(192_000, 101, 1920, 700_000, 701_000, 2_880_000, 48_000);
        assert_eq!((ms, late), (80.0, true));
    }
}
