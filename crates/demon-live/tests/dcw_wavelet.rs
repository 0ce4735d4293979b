//! The DCW wavelet through the live controls (issue 12, item 8): `set_dcw {wavelet}` reaches
//! the lane the pipeline runs and changes what is heard; state and presets carry it; an
//! unknown wavelet is refused naming the ones there are.

use demon_engine::Wavelet;
use demon_live::control::ControlMessage;
use demon_live::core::{LiveCore, SessionConfig};

fn core() -> LiveCore {
    let cfg = SessionConfig {
        song_seconds: 2.0,
        prompt: "techno".into(),
        receptive_field: Some(demon_engine::ReceptiveField {
            before: 25,
            after: 1,
        }),
        ..Default::default()
    };
    LiveCore::new(cfg, demon_sketch::backend()).unwrap()
}

fn played(wavelet: Option<Wavelet>) -> (Vec<f32>, LiveCore) {
    let mut core = core();
    // A strong correction, so the band split's filters matter.
    core.apply(&ControlMessage::SetKnob {
        name: "dcw".into(),
        value: 0.5,
    })
    .unwrap();
    if let Some(w) = wavelet {
        core.apply(&ControlMessage::SetDcw {
            enabled: None,
            mode: None,
            wavelet: Some(w),
        })
        .unwrap();
    }
    for _ in 0..30 {
        core.tick(None).unwrap();
    }
    (core.latest_audio().unwrap().channels[0].clone(), core)
}

#[test]
fn the_wavelet_is_heard_kept_in_the_state_and_carried_by_presets() {
    let (haar, mut core) = played(None);
    assert_eq!(core.state().dcw_wavelet, Wavelet::Haar);
    assert!(
        !core.preset().to_json().contains("dcw_wavelet"),
        "Haar is left out"
    );
    let (again, _) = played(Some(Wavelet::Haar));
    assert_eq!(haar, again, "naming the default changes nothing");
    let (db4, mut core) = played(Some(Wavelet::Db4));
    assert_ne!(haar, db4, "another wavelet is heard");
    assert_eq!(core.state().dcw_wavelet, Wavelet::Db4);

    let preset = core.preset();
    let json = preset.to_json();
    assert!(json.contains("\"dcw_wavelet\": \"db4\""), "{json}");
    let mut fresh = self::core();
    fresh
        .apply(&ControlMessage::load_preset(
            demon_live::preset::Preset::from_json(json.as_bytes()).unwrap(),
        ))
        .unwrap();
    assert_eq!(fresh.state().dcw_wavelet, Wavelet::Db4);
}

#[test]
fn an_unknown_wavelet_is_refused_naming_the_known_ones() {
    let e = serde_json::from_str::<ControlMessage>(r#"{"type":"set_dcw","wavelet":"db99"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("db99") && e.contains("sym8"), "{e}");
}
