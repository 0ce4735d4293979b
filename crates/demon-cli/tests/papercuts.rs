//! Issue 10 item 10, the command line's papercuts as a user meets them: `demon knobs`, a
//! negative `--bpm` reaching the range check, one line for a missing file, a taken port
//! refused before the model loads, and `perform` counting the script events it rejected.

use std::path::PathBuf;
use std::process::{Command, Output};

fn demon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_demon"))
        .args(args)
        .output()
        .expect("run demon")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("demon-papercuts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The command failed with exactly one line on stderr, an `error:` containing `needle`.
fn one_error_line(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "{e}");
    let lines: Vec<&str> = e.trim().lines().collect();
    assert_eq!(lines.len(), 1, "one line: {e}");
    assert!(
        lines[0].starts_with("error:") && lines[0].contains(needle),
        "`{needle}` in: {e}"
    );
}

#[test]
fn knobs_lists_the_catalog() {
    let o = demon(&["knobs"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let json = demon(&["knobs", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), demon_live::controls::KNOBS.len());
    for (k, j) in demon_live::controls::KNOBS.iter().zip(list) {
        assert_eq!(j["name"], k.name);
        assert_eq!(j["min"], k.min);
        assert_eq!(j["max"], k.max);
        assert_eq!(j["default"], k.default);
        assert_eq!(j["unit"], k.unit);
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{} ", k.name)) && l.contains(k.unit)),
            "{} in {text}",
            k.name
        );
    }
}

#[test]
fn a_negative_bpm_reaches_the_range_check() {
    let out = tmp("bpm.wav");
    one_error_line(
        &demon(&[
            "render",
            "--bpm",
            "-5",
            "--seconds",
            "1",
            "-q",
            "--out",
            out.to_str().unwrap(),
        ]),
        "-5 is outside 20..=400",
    );
    // serve refuses it before loading a model or binding a port.
    one_error_line(
        &demon(&[
            "serve",
            "--bpm",
            "-5",
            "--port",
            "0",
            "--no-osc",
            "--no-midi",
        ]),
        "-5 is outside 20..=400",
    );
}

#[test]
fn a_bad_idle_pause_is_refused_before_the_server_starts() {
    for bad in ["-3", "0", "nan"] {
        one_error_line(
            &demon(&[
                "serve",
                "--idle-pause-s",
                bad,
                "--port",
                "0",
                "--no-osc",
                "--no-midi",
            ]),
            "--idle-pause-s",
        );
    }
}

#[test]
fn a_missing_file_is_one_line_naming_it() {
    let out = tmp("missing.wav");
    let out = out.to_str().unwrap();
    let nope = "/nonexistent/demon/song.wav";
    one_error_line(
        &demon(&["render", "--source", nope, "--out", out, "-q"]),
        &format!("--source {nope}: no such file"),
    );
    one_error_line(
        &demon(&[
            "serve",
            "--source",
            nope,
            "--port",
            "0",
            "--no-osc",
            "--no-midi",
        ]),
        &format!("--source {nope}: no such file"),
    );
    one_error_line(
        &demon(&["replay", "/nonexistent/demon/take.jsonl", "--out", out]),
        "the session file /nonexistent/demon/take.jsonl: no such file",
    );
    one_error_line(
        &demon(&[
            "perform",
            "--script",
            "/nonexistent/demon/script.jsonl",
            "--seconds",
            "1",
        ]),
        "--script /nonexistent/demon/script.jsonl: no such file",
    );
    // A library source is no file.
    let o = demon(&[
        "render",
        "--source",
        "library:house",
        "--seconds",
        "1",
        "--out",
        out,
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_taken_port_is_refused_before_the_model_loads() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = demon(&["serve", "--port", &port, "--no-osc", "--no-midi"]);
    one_error_line(&o, "the port is in use");
    assert!(stderr(&o).contains(&port));
}

#[test]
fn perform_counts_the_script_events_it_rejected() {
    let script = tmp("script.jsonl");
    std::fs::write(
        &script,
        concat!(
            r#"{"at": 0.1, "message": {"type": "set_knob", "name": "denoise", "value": 0.5}}"#,
            "\n",
            r#"{"at": 0.2, "message": {"type": "set_knob", "name": "denoise", "value": 5.0}}"#,
            "\n",
            r#"{"at": 0.3, "message": {"type": "set_knob", "name": "wobble", "value": 1.0}}"#,
            "\n",
        ),
    )
    .unwrap();
    let o = demon(&[
        "perform",
        "--script",
        script.to_str().unwrap(),
        "--seconds",
        "0.5",
        "--song-seconds",
        "5",
        "--fast",
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("2 of 3 scripted events were rejected"), "{e}");
    assert_eq!(e.matches("rejected: ").count(), 2, "each is named: {e}");
}
