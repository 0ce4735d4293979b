//! Issue 15, crash-safe recordings: `demon serve --record FILE` killed with SIGKILL (nothing
//! can finish the file) leaves a session file that `demon replay` renders up to its last
//! recorded tick, saying that it was cut short.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// POST one control to `/api/control`; returns the HTTP status line and body.
fn post_control(addr: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the server");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /api/control HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[test]
fn a_session_file_left_by_kill_9_replays_up_to_its_last_event() {
    let dir = std::env::temp_dir().join(format!("demon-kill9-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (rec, out) = (dir.join("live.jsonl"), dir.join("replay.wav"));
    let mut server = Command::new(env!("CARGO_BIN_EXE_demon"))
        .args([
            "serve",
            "--port",
            "0",
            "--no-osc",
            "--no-midi",
            "--song-seconds",
            "4",
        ])
        .arg("--record")
        .arg(&rec)
        .arg("--recordings-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demon serve");
    let stderr = server.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("demon serve ended before serving")
            .unwrap();
        if let Some(rest) = line.strip_prefix("serving the performer UI on http://") {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    // Keep reading stderr so the server never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    for (name, value) in [("guidance", 2.5), ("denoise", 0.6), ("guidance", 3.0)] {
        let body = format!(r#"{{"type":"set_knob","name":"{name}","value":{value}}}"#);
        let answer = post_control(&addr, &body);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    server.kill().expect("SIGKILL the server");
    server.wait().unwrap();
    let _ = drain.join();

    let file = demon_live::record::read_session(&rec).expect("the file left behind reads");
    assert_eq!(file.events.len(), 3, "every control recorded");
    let last_event_tick = file.events.iter().map(|(t, _)| *t).max().unwrap();
    assert!(file.ticks > last_event_tick, "{} ticks", file.ticks);

    let t0 = Instant::now();
    let replay = Command::new(env!("CARGO_BIN_EXE_demon"))
        .arg("replay")
        .arg(&rec)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run demon replay");
    let says = String::from_utf8_lossy(&replay.stderr);
    assert!(replay.status.success(), "{says}");
    assert!(says.contains("no end line"), "the cut is reported: {says}");
    assert!(
        says.contains(&format!("replayed {} ticks (3 events)", file.ticks)),
        "{says}"
    );
    // The WAV holds every recorded tick's audio: up to the last event and past it.
    let wav = std::fs::read(&out).unwrap();
    let samples_per_tick = file.config.samples_per_tick as u64;
    let frames = (wav.len() as u64 - 44) / 4; // 16-bit stereo
    assert!(
        frames > last_event_tick * samples_per_tick,
        "{frames} frames for an event at tick {last_event_tick}"
    );
    println!(
        "replayed {} ticks in {:.1} s",
        file.ticks,
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
