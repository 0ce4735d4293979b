//! Audio analysis on renders whose tempo and key are known: the sketch composer writes the
//! tempo and key its prompt asks for, so a render through the engine is a labelled example.

use demon_audio::analysis::{Key, estimate_key, estimate_tempo};
use demon_engine::{Audio, BackendSet, Prompt};
use demon_live::{RenderSpec, render};
use demon_sketch::Style;

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

fn render_one(backend: &mut BackendSet, style: Style, bpm: f32, key: &str, seed: u64) -> Audio {
    let prompt = Prompt {
        tags: style.name().into(),
        bpm: Some(bpm),
        key: Some(key.into()),
        ..Default::default()
    };
    let mut spec = RenderSpec::new(prompt, 25 * 30);
    let facts = demon_live::BackendFacts::of(backend);
    spec.controls
        .set_knob("seed", seed as f64, &facts)
        .expect("seed");
    let takes = render(backend, &spec, &mut |_, _| {}).expect("render");
    takes.into_iter().next().expect("one take").audio
}

/// Tempo and key of one render of each style, at tempos and keys other than the defaults.
#[test]
fn tempo_and_key_of_sketch_renders() {
    let cases: [(Style, f32, &str, Key); 6] = [
        (
            Style::House,
            122.0,
            "G minor",
            Key {
                tonic: 7,
                minor: true,
            },
        ),
        (
            Style::Techno,
            136.0,
            "D minor",
            Key {
                tonic: 2,
                minor: true,
            },
        ),
        (
            Style::Ambient,
            84.0,
            "E major",
            Key {
                tonic: 4,
                minor: false,
            },
        ),
        (
            Style::HipHop,
            94.0,
            "C minor",
            Key {
                tonic: 0,
                minor: true,
            },
        ),
        (
            Style::Funk,
            104.0,
            "A major",
            Key {
                tonic: 9,
                minor: false,
            },
        ),
        (
            Style::DrumAndBass,
            172.0,
            "F minor",
            Key {
                tonic: 5,
                minor: true,
            },
        ),
    ];
    let mut backend = sketch();
    let mut keys_right = 0;
    let mut report = Vec::new();
    for (style, bpm, key_text, key) in cases {
        let audio = render_one(&mut backend, style, bpm, key_text, 7);
        let tempo = estimate_tempo(&audio);
        let found = estimate_key(&audio);
        report.push(format!(
            "{style:?} {bpm} {key_text}: tempo {tempo:?} key {found:?}"
        ));
        let k = found.map(|k| k.key);
        if k == Some(key) {
            keys_right += 1;
        }
        let got = tempo.map(|t| t.bpm);
        assert!(
            got.is_some_and(|b| ((b - bpm as f64) / bpm as f64).abs() < 0.01),
            "{style:?} at {bpm} BPM: estimated {got:?}\n{}",
            report.join("\n")
        );
    }
    println!("{}", report.join("\n"));
    // Issue 12 asks for the key right on 5 of 6 styles. The posterior-mean renders blend
    // several progressions, and the bass often dwells on the dominant or the sixth; the
    // estimator finds the scale from the harmony register, then the tonic by profile and
    // bass, and names all 6 on these renders (measured on CLI renders of the same prompts,
    // where the old whole-range Krumhansl–Kessler estimate named 2, losing to relative and
    // dominant keys).
    assert!(
        keys_right >= 6,
        "keys right {keys_right} of 6:\n{}",
        report.join("\n")
    );
}

fn demon(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_demon"))
        .args(args)
        .output()
        .expect("run demon")
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("demon-analysis-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn load(path: &std::path::Path) -> Audio {
    let d = demon_audio::load_file(path, Default::default()).unwrap();
    Audio::new(d.sample_rate, d.channels).unwrap()
}

/// `demon render --lufs TARGET` writes takes whose integrated loudness is the target.
#[test]
fn render_lufs_reaches_the_target() {
    let out = tmp("loud.wav");
    for target in ["-16", "-30"] {
        let o = demon(&[
            "render",
            "--prompt",
            "techno",
            "--seconds",
            "8",
            "--takes",
            "2",
            "--lufs",
            target,
            "--out",
            out.to_str().unwrap(),
            "-q",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want: f64 = target.parse().unwrap();
        for k in 1..=2 {
            let path = out.with_file_name(format!("loud-{k:02}.wav"));
            let got = demon_audio::analysis::integrated_lufs(&load(&path)).unwrap();
            assert!(
                (got - want).abs() < 0.5,
                "take {k} at {target}: {got:.2} LUFS"
            );
        }
    }
    // Without --lufs the loudness is whatever the render gives (not the target by accident).
    let plain = tmp("plain.wav");
    let o = demon(&[
        "render",
        "--prompt",
        "techno",
        "--seconds",
        "8",
        "--out",
        plain.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success());
    let l = demon_audio::analysis::integrated_lufs(&load(&plain)).unwrap();
    assert!((l - -30.0).abs() > 2.0, "{l}");
    // A bad target is refused before any work.
    let o = demon(&[
        "render",
        "--seconds",
        "2",
        "--lufs",
        "nan",
        "--out",
        plain.to_str().unwrap(),
        "-q",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--lufs") && !err.contains("panicked"),
        "{err}"
    );
}

/// `demon inspect audio FILE [--json]` on a render of known tempo.
#[test]
fn inspect_audio_reports_tempo_and_loudness() {
    let out = tmp("inspect.wav");
    let o = demon(&[
        "render",
        "--prompt",
        "house",
        "--bpm",
        "126",
        "--seconds",
        "20",
        "--lufs",
        "-18",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = demon(&["inspect", "audio", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let bpm = v["bpm"].as_f64().unwrap();
    assert!((bpm - 126.0).abs() / 126.0 < 0.01, "{v}");
    assert!(
        (v["integrated_lufs"].as_f64().unwrap() - -18.0).abs() < 0.5,
        "{v}"
    );
    assert!(
        (v["duration_seconds"].as_f64().unwrap() - 20.0).abs() < 1e-6,
        "{v}"
    );
    assert!(v["key"].is_string(), "{v}");
    let o = demon(&["inspect", "audio", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("BPM") && text.contains("LUFS"), "{text}");
    let o = demon(&["inspect", "audio", "/nonexistent/x.wav"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("x.wav") && !err.contains("panicked"),
        "{err}"
    );
}
