//! Issue 12, item 2: the LoRA library on the sketch backend. A file copied into a library
//! folder while the session runs is picked up by a rescan, registered without loading, loaded
//! beside the ticks by the first control that names it, its trigger words join the
//! conditioning prompt, it changes the output, and the session file replays bit-identically
//! (the install is recorded, so the replay reads the same file at the same tick).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use demon_live::control::ControlMessage;
use demon_live::core::{LiveCore, SessionConfig};
use demon_live::lora_library::LibraryStatus;
use demon_live::record::{ScriptEvent, read_session};
use demon_live::session::{RunOptions, start};
use demon_live::sink::WavRecorder;
use demon_sketch::adapters::{StylePrior, write_style_adapter};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("demon-lora-library-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config() -> SessionConfig {
    SessionConfig {
        song_seconds: 4.0,
        prompt: "house, 124 bpm".into(),
        ..Default::default()
    }
}

/// A techno adapter: its header says one set of trigger words, its sidecar another (which wins).
fn write_warehouse(dir: &Path) -> PathBuf {
    let f = dir.join("warehouse.safetensors");
    let header = BTreeMap::from([
        ("trigger_words".to_string(), "acid, rave".to_string()),
        ("recommended_strength".to_string(), "0.8".to_string()),
    ]);
    write_style_adapter(&f, &StylePrior([0.0, 3.0, 0.0, 0.0, 0.0, 0.0]), &header).unwrap();
    std::fs::write(
        dir.join("warehouse.json"),
        r#"{"trigger_words": ["techno", "zorblax"], "group": "dark"}"#,
    )
    .unwrap();
    f
}

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_file_copied_in_while_running_is_rescanned_loaded_heard_and_replayed() {
    let root = temp("live");
    let lib = root.join("loras");
    std::fs::create_dir_all(&lib).unwrap();
    let (session, live, replayed) = (
        root.join("s.jsonl"),
        root.join("live.wav"),
        root.join("replay.wav"),
    );
    let core = LiveCore::new(config(), demon_sketch::backend()).unwrap();
    let sr = core.sample_rate();
    let handle = start(
        core,
        RunOptions {
            realtime: true,
            sinks: vec![Box::new(WavRecorder::create(&live, sr, false).unwrap())],
            session_file: Some(session.clone()),
            lora_dirs: vec![lib.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    let state = |h: &demon_live::session::SessionHandle| h.state().unwrap();
    assert!(state(&handle).lora_library.is_empty());
    handle
        .control(
            1,
            ControlMessage::SetKnob {
                name: "denoise".into(),
                value: 0.9,
            },
            WAIT,
        )
        .unwrap();

    // Copied in while the session runs, then rescanned: registered, not loaded.
    write_warehouse(&lib);
    let report = handle.rescan_loras(WAIT).unwrap();
    assert_eq!(report.added, ["warehouse"]);
    assert_eq!(report.total, 1);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let st = state(&handle);
    let entry = &st.lora_library[0];
    assert_eq!(entry.status, LibraryStatus::Registered);
    assert_eq!(entry.group, "dark");
    assert_eq!(entry.metadata.trigger_words, ["techno", "zorblax"]);
    assert_eq!(entry.metadata.recommended_strength, Some(0.8));
    assert!(
        st.adapters.iter().all(|a| a.id != "warehouse"),
        "registered only: not in the model"
    );
    let before = st.used.clone().unwrap().prompt;
    assert!(!before.style.contains("techno"), "{before:?}");

    // The first control that names it loads it beside the ticks, then applies.
    handle
        .control(
            1,
            ControlMessage::SetLora {
                id: "warehouse".into(),
                strength: 1.0,
            },
            WAIT,
        )
        .unwrap();
    let st = state(&handle);
    assert_eq!(st.lora_library[0].status, LibraryStatus::Loaded);
    assert!(
        st.adapters.iter().any(|a| a.id == "warehouse"),
        "in the model"
    );
    // The model takes the strength at the next ticks (slewed, as any LoRA strength).
    assert_eq!(st.targets.get("lora:warehouse"), Some(&1.0));
    assert_eq!(st.trigger_words, ["techno", "zorblax"]);
    // The trigger words are in the conditioning prompt: the sketch hears `techno` and says it
    // did not understand `zorblax`.
    let used = st.used.clone().unwrap().prompt;
    assert!(used.style.contains("techno"), "{used:?}");
    assert!(
        used.fallback.as_deref().unwrap_or("").contains("`zorblax`"),
        "{used:?}"
    );
    // A knob move on it now goes straight through; a preload of what is in is a no-op.
    handle
        .control(
            1,
            ControlMessage::SetKnob {
                name: "lora:warehouse".into(),
                value: 0.5,
            },
            WAIT,
        )
        .unwrap();
    // A preload must name the library's file: no other path can be read through it.
    let e = handle
        .control(
            1,
            ControlMessage::InstallLora {
                id: "warehouse".into(),
                path: "/etc/passwd".into(),
                metadata: Default::default(),
            },
            WAIT,
        )
        .unwrap_err();
    assert!(e.to_string().contains("/etc/passwd"), "{e}");
    // Let what the adapter changed reach the loop before stopping.
    std::thread::sleep(Duration::from_millis(1500));
    handle.stop().unwrap();

    let file = read_session(&session).unwrap();
    let kinds: Vec<&str> = file
        .events
        .iter()
        .map(|(_, m)| match m {
            ControlMessage::InstallLora { .. } => "install",
            ControlMessage::SetLora { .. } => "set_lora",
            _ => "other",
        })
        .filter(|k| *k != "other")
        .collect();
    assert_eq!(
        kinds,
        ["install", "set_lora"],
        "the install is recorded first"
    );
    demon_live::perform::replay(&file, demon_sketch::backend(), &replayed).unwrap();
    let (a, b) = (
        std::fs::read(&live).unwrap(),
        std::fs::read(&replayed).unwrap(),
    );
    assert!(a.len() > 44 + 30 * 1920 * 4, "{} bytes", a.len());
    assert!(a == b, "live and replay differ");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Offline performances load a library adapter on the runner thread when a scripted control
/// first names it; the adapter changes what plays, and a broken file is refused by name
/// while the rest of the script applies.
#[test]
fn scripted_library_adapters_change_the_output_and_broken_ones_are_named() {
    let root = temp("offline");
    let lib = root.join("loras");
    std::fs::create_dir_all(&lib).unwrap();
    write_warehouse(&lib);
    std::fs::write(lib.join("broken.safetensors"), b"not a safetensors file").unwrap();
    let run = |events: Vec<ScriptEvent>, wav: &Path, record: Option<&Path>| {
        demon_live::perform::perform(
            config(),
            demon_sketch::backend(),
            &events,
            3.0,
            record,
            Some(wav),
            false,
            Vec::new(),
            vec![lib.clone()],
        )
        .unwrap()
    };
    let lora = |id: &str| ScriptEvent {
        at: 0.4,
        message: ControlMessage::SetLora {
            id: id.into(),
            strength: 1.0,
        },
    };
    let (plain, with, broken) = (root.join("a.wav"), root.join("b.wav"), root.join("c.wav"));
    let session = root.join("s.jsonl");
    run(Vec::new(), &plain, None);
    let summary = run(vec![lora("warehouse")], &with, Some(&session));
    assert_eq!(summary.rejected_events, 0);
    assert_ne!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(&with).unwrap(),
        "the adapter changes the output"
    );
    let summary = run(vec![lora("broken")], &broken, None);
    assert_eq!(summary.rejected_events, 1, "the broken adapter is refused");
    assert_eq!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(&broken).unwrap(),
        "a refused adapter changes nothing"
    );
    // The replay needs no library: the recorded install reads the file itself.
    let replayed = root.join("r.wav");
    let file = read_session(&session).unwrap();
    demon_live::perform::replay(&file, demon_sketch::backend(), &replayed).unwrap();
    assert_eq!(
        std::fs::read(&with).unwrap(),
        std::fs::read(&replayed).unwrap()
    );
    std::fs::remove_dir_all(&root).unwrap();
}
