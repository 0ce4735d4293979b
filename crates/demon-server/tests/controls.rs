//! Issue 15, controls never queue: WebSocket clients each sending 50 random valid controls a
//! second. The normal run checks correctness for a few seconds (every control answered, none
//! lost, the last value of each client's own knob applied); the soak, behind `--ignored` and
//! `DEMON_SOAK_S` (seconds, default 600), checks that ticks never stick and that replies stay
//! within 100 ms p99, and prints the reply latencies and the process's RSS. Run it in a
//! release build, as a performer runs the server (a debug build's ticks take several times
//! longer, and on a 2-core machine its p99 is about 175 ms):
//!
//! ```text
//! DEMON_SOAK_S=600 cargo test --release -p demon-server --test controls soak -- --ignored --nocapture
//! ```

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use demon_live::SessionError;
use demon_live::controls::KNOBS;
use demon_live::session::SessionHandle;
use demon_server::{Hooks, ServerOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Controls sent per second by each client.
const RATE_HZ: u64 = 50;

async fn serve(handle: &SessionHandle) -> SocketAddr {
    let mut opts = ServerOptions::loopback(0);
    opts.osc_bind = None;
    opts.midi = false;
    opts.recordings_dir =
        std::env::temp_dir().join(format!("demon-controls-{}", std::process::id()));
    let hooks = Hooks {
        resolve_source: Arc::new(|s: &str| Err(SessionError::bad_source(s, "none in this test"))),
        library: Vec::new(),
        render_offline: Arc::new(|_| Err(SessionError::bad_value("render", "none in this test"))),
    };
    demon_server::serve(opts, handle.clone(), hooks, std::future::pending())
        .await
        .unwrap()
}

/// A small deterministic generator (xorshift), one per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random control the session must accept: any knob in its range, the x0 target strength as
/// knob and curve (D4's suspect), play and pause.
fn random_control(rng: &mut Rng) -> Value {
    let k = &KNOBS[rng.next() as usize % KNOBS.len()];
    let mut v = k.min + rng.unit() * (k.max - k.min);
    if k.integer {
        v = v.round();
    }
    match rng.next() % 10 {
        0 => {
            let curve = rng.next().is_multiple_of(2).then(
                || json!({"type": "raw", "values": (0..8).map(|_| rng.unit()).collect::<Vec<_>>()}),
            );
            json!({"type": "set_curve", "name": "x0_target_strength", "curve": curve})
        }
        1 => json!({"type": "set_knob", "name": "x0_target_strength", "value": rng.unit()}),
        2 => json!({"type": "set_playing", "playing": !rng.next().is_multiple_of(4)}),
        _ => json!({"type": "set_knob", "name": k.name, "value": v}),
    }
}

/// What one client saw: reply latencies (ms, send → answer) and the answers by id.
#[derive(Default)]
struct Seen {
    latencies_ms: Vec<f64>,
    /// What the server measured (`latency_ms` of a reply: received → applied).
    server_ms: Vec<f64>,
    answers: HashMap<u64, Value>,
}

/// One client: `count` random controls at [`RATE_HZ`], then `last` (waited for), reading every
/// answer meanwhile. Returns once every control is answered or `patience` passed after the last.
async fn client(addr: SocketAddr, seed: u64, count: u64, last: Value, patience: Duration) -> Seen {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            while seen.answers.len() < (count + 1) as usize {
                let Ok(Some(Ok(m))) = tokio::time::timeout(patience, rx.next()).await else {
                    break;
                };
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                if !matches!(v["type"].as_str(), Some("reply" | "error")) {
                    continue;
                }
                let Some(id) = v["id"].as_u64() else {
                    panic!("an answer without an id: {v}")
                };
                let sent = sent_at.lock().unwrap().get(&id).copied();
                let sent = sent.unwrap_or_else(|| panic!("an answer to an unsent id: {v}"));
                seen.latencies_ms
                    .push(sent.elapsed().as_secs_f64() * 1000.0);
                seen.server_ms.extend(v["latency_ms"].as_f64());
                assert!(
                    seen.answers.insert(id, v.clone()).is_none(),
                    "two answers to id {id}: {v}"
                );
            }
            seen
        })
    };
    let mut rng = Rng(seed);
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_HZ));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for id in 0..=count {
        every.tick().await;
        let message = if id == count {
            last.clone()
        } else {
            random_control(&mut rng)
        };
        let frame = json!({"id": id, "type": "control", "message": message}).to_string();
        sent_at.lock().unwrap().insert(id, Instant::now());
        tx.send(Message::Text(frame.into())).await.unwrap();
    }
    let seen = reader.await.unwrap();
    let _ = tx.close().await;
    seen
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Waits until the session has generated past its first window.
async fn warm_up(handle: &SessionHandle) {
    for _ in 0..600 {
        if handle.state().unwrap().generations >= 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the session did not warm up");
}

/// Two clients × 50 controls/s for 3 s: every control is answered, exactly once, none lost;
/// the random controls are all valid, so every answer is a `reply`, and each client's final
/// value for its own knob is what the session holds (coalescing never drops the last value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_at_fifty_controls_a_second_get_every_answer() {
    let handle = common::session(4.0);
    let addr = serve(&handle).await;
    warm_up(&handle).await;
    let count = 3 * RATE_HZ;
    let finals = [("guidance", 2.5), ("denoise", 0.55)];
    let clients = finals.iter().enumerate().map(|(i, (knob, value))| {
        client(
            addr,
            0x5eed + i as u64,
            count,
            json!({"type": "set_knob", "name": knob, "value": value}),
            Duration::from_secs(30),
        )
    });
    let seen = futures_util::future::join_all(clients).await;
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            s.answers.len() as u64,
            count + 1,
            "client {i}: every control answered"
        );
        for id in 0..=count {
            let a = &s.answers[&id];
            assert_eq!(a["type"], "reply", "client {i}, control {id}: {a}");
            assert_eq!(a["ok"], true, "{a}");
            assert!(a["tick"].as_u64().is_some(), "{a}");
        }
    }
    let targets = handle.state().unwrap().targets;
    for (knob, value) in finals {
        assert_eq!(targets[knob], value, "{knob}");
    }
    handle.stop().unwrap();
}

/// The soak (see the module docs): random valid controls from two clients for `DEMON_SOAK_S`
/// seconds. Ticks must keep advancing (no window of 5 s without one), every control must be
/// answered, and replies must stay within 100 ms p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak: DEMON_SOAK_S=600 cargo test --release -p demon-server --test controls soak -- --ignored --nocapture"]
async fn soak() {
    let seconds: u64 = std::env::var("DEMON_SOAK_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let handle = common::session(8.0);
    // A source, so the x0 target (D4's suspect) has something to pull towards.
    let tone: Vec<f32> = (0..8 * 48_000)
        .map(|i| (i as f32 * 0.03).sin() * 0.3)
        .collect();
    handle
        .control(
            0,
            demon_live::control::ControlMessage::SetSource {
                source: demon_live::control::SourceSpec::Audio {
                    name: "tone.wav".into(),
                    channels: vec![tone.clone(), tone],
                },
            },
            Duration::from_secs(30),
        )
        .unwrap();
    let addr = serve(&handle).await;
    warm_up(&handle).await;
    let rss_start = rss_mb();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Watch the ticks and the health once a second.
    let watcher = {
        let (handle, done) = (handle.clone(), done.clone());
        tokio::spawn(async move {
            let (mut last_tick, mut last_change) = (handle.state().unwrap().tick, Instant::now());
            let (mut longest_stall, mut rss_max) = (Duration::ZERO, 0.0f64);
            let mut tick_errors = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let tick = handle.state().unwrap().tick;
                if tick != last_tick {
                    (last_tick, last_change) = (tick, Instant::now());
                }
                longest_stall = longest_stall.max(last_change.elapsed());
                rss_max = rss_max.max(rss_mb());
                if let Some(e) = handle.health().tick_error
                    && tick_errors.last() != Some(&e)
                {
                    eprintln!("soak: health reports a failing tick: {e}");
                    tick_errors.push(e);
                }
            }
            (longest_stall, rss_max, tick_errors, last_tick)
        })
    };
    let t0 = Instant::now();
    let ticks0 = handle.state().unwrap().tick;
    let count = seconds * RATE_HZ;
    let clients = (0..2u64).map(|i| {
        client(
            addr,
            0xd4d4 + i,
            count,
            json!({"type": "set_playing", "playing": true}),
            Duration::from_secs(30),
        )
    });
    let seen = futures_util::future::join_all(clients).await;
    let wall = t0.elapsed();
    done.store(true, std::sync::atomic::Ordering::Release);
    let (longest_stall, rss_max, tick_errors, last_tick) = watcher.await.unwrap();
    let mut latencies: Vec<f64> = seen
        .iter()
        .flat_map(|s| s.latencies_ms.iter().copied())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut server: Vec<f64> = seen
        .iter()
        .flat_map(|s| s.server_ms.iter().copied())
        .collect();
    server.sort_by(f64::total_cmp);
    let answered: usize = seen.iter().map(|s| s.answers.len()).sum();
    let mut codes: HashMap<String, usize> = HashMap::new();
    for s in &seen {
        for a in s.answers.values() {
            let code = a["code"].as_str().unwrap_or("ok").to_string();
            *codes.entry(code).or_default() += 1;
        }
    }
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "soak: {:.0} s, 2 clients x {RATE_HZ} controls/s, {answered} of {} answered {codes:?}; \
         reply p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (server-side p50 {:.1} ms, \
         p99 {:.1} ms); ticks {ticks0} -> {last_tick}, \
         longest stall {:.1} s; RSS {rss_start:.0} MB at start, {rss_max:.0} MB max, {:.0} MB at end; \
         failing-tick reports: {}",
        wall.as_secs_f64(),
        2 * (count + 1),
        percentile(&server, 0.5),
        percentile(&server, 0.99),
        longest_stall.as_secs_f64(),
        rss_mb(),
        tick_errors.len()
    );
    for e in &tick_errors {
        println!("soak: failing tick: {e}");
    }
    assert!(
        longest_stall < Duration::from_secs(5),
        "ticks stuck for {longest_stall:?}"
    );
    assert_eq!(answered as u64, 2 * (count + 1), "every control answered");
    assert!(p99 <= 100.0, "reply p99 {p99:.1} ms is over 100 ms");
    handle.stop().unwrap();
}
