//! The propagation rows of `demon bench` (issue 11, item 5), measured on the sketch backend at a
//! small size: every control class must be measured (none written in), and what each class
//! means must hold in the numbers. A change to the shared lane or the weights reaches slots
//! already in flight; a submission-time or schedule change reaches only requests submitted after
//! it, so nothing of it can finish before a whole schedule has run.

use demon_engine::BackendSet;
use demon_live::bench::{BenchConfig, Propagation, propagation};

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

const STEPS: usize = 6;
const DEPTH: usize = 3;

fn measured() -> std::collections::BTreeMap<String, Propagation> {
    let cfg = BenchConfig {
        steps: STEPS,
        propagation_seconds: 2.0,
        propagation_depth: DEPTH,
        ..BenchConfig::default()
    };
    let rows = propagation(&mut sketch(), &cfg, None).expect("every class is measured");
    for (class, p) in &rows {
        println!(
            "{class}: onset {:?}..{:?}, convergence {:?}..{:?} over {} phases ({})",
            p.onset_ticks_min,
            p.onset_ticks,
            p.convergence_ticks_min,
            p.convergence_ticks,
            p.phases,
            p.note
        );
    }
    rows
}

fn ticks(p: &Propagation) -> (u64, u64, u64, u64) {
    let get = |v: Option<u64>, what: &str| v.unwrap_or_else(|| panic!("{what} not measured"));
    (
        get(p.onset_ticks_min, "onset min"),
        get(p.onset_ticks, "onset"),
        get(p.convergence_ticks_min, "convergence min"),
        get(p.convergence_ticks, "convergence"),
    )
}

#[test]
fn every_class_is_measured_at_every_phase_and_means_what_it_says() {
    let rows = measured();
    let classes = [
        "shared_per_step",
        "per_slot_submission",
        "structural",
        "structural_depth",
        "global_weights",
    ];
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut c = classes.to_vec();
            c.sort();
            c
        },
        "the bench measures exactly the five classes"
    );
    for class in classes {
        let p = &rows[class];
        assert_eq!(
            p.phases, STEPS,
            "{class}: one trial per phase of the S-tick cycle"
        );
        let (onset_min, onset, conv_min, conv) = ticks(p);
        assert!(onset_min >= 1, "{class}: nothing changes before the change");
        assert!(
            onset_min <= onset && conv_min <= conv,
            "{class}: min above worst case"
        );
        assert!(onset <= conv, "{class}: converged before it was heard");
    }
    let s = STEPS as u64;
    // Reaches slots in flight: heard before a whole schedule has run, at some phase at least.
    for class in ["shared_per_step", "global_weights"] {
        let (onset_min, _, _, _) = ticks(&rows[class]);
        assert!(
            onset_min < s,
            "{class}: in-flight slots never heard the change (onset {onset_min} ≥ S = {s})"
        );
    }
    // Reaches only later submissions: a new request needs all its S steps (the steps change
    // gives them S - 2).
    let (onset_min, _, conv_min, _) = ticks(&rows["per_slot_submission"]);
    assert!(
        onset_min >= s && conv_min >= s,
        "per-slot: heard after {onset_min} ticks, before a new request could finish (S = {s})"
    );
    let (onset_min, _, _, _) = ticks(&rows["structural"]);
    assert!(
        onset_min >= s - 2,
        "steps change: heard after {onset_min} ticks, before a new schedule could finish"
    );
    // A depth change alters how many slots run on the very next tick.
    let (onset_min, onset, _, _) = ticks(&rows["structural_depth"]);
    assert_eq!(
        (onset_min, onset),
        (1, 1),
        "depth change: slots running per tick"
    );
}
