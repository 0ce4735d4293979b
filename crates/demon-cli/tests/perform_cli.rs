//! `demon perform` as a user runs it: which sink plays, and what a build without the optional
//! system-library parts (sound-card output, MIDI) says at start.

use std::path::Path;
use std::process::Command;

#[test]
fn perform_says_which_sink_plays_and_how_to_get_device_output() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/performance.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_demon"))
        .args(["perform", "--script"])
        .arg(&script)
        .args([
            "--seconds",
            "0.5",
            "--song-seconds",
            "5",
            "--fast",
            "--device",
        ])
        .output()
        .expect("run demon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let build: Vec<&str> = stderr.lines().filter(|l| l.starts_with("build:")).collect();
    let audio: Vec<&str> = stderr.lines().filter(|l| l.starts_with("audio:")).collect();
    assert_eq!(
        audio.len(),
        1,
        "one line says where the audio goes: {stderr}"
    );
    if cfg!(feature = "device") {
        assert!(build.is_empty(), "{stderr}");
    } else {
        assert_eq!(
            audio[0],
            "audio: this binary was built without sound-card output; using the clock-paced null sink"
        );
        assert_eq!(build.len(), 1, "{stderr}");
        assert!(
            build[0].contains("sudo apt-get install pkg-config libasound2-dev")
                && build[0].ends_with("--features device)"),
            "{}",
            build[0]
        );
    }
    assert!(stderr.contains("ticks,"), "the performance ran: {stderr}");
}
