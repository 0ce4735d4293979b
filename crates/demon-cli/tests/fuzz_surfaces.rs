//! Issue 15, nothing a peer sends stops the session: a seeded fuzz of every surface against a
//! real `demon serve` (its own process, so a panic, an abort or its memory are seen alone).
//! WebSocket text and binary frames, OSC packets and MCP requests, mutated from valid ones
//! (bytes flipped, cut, duplicated, spliced); meanwhile a well-behaved WebSocket client keeps
//! receiving audio. After each surface: the process is alive, the ticks advance, its resident
//! memory is under [`RSS_BOUND`], and nothing panicked on stderr.
//!
//! 20 000 of each by default; `DEMON_FUZZ_SURFACE_N` sets the count (10^6 for a long run).

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The server's resident memory may not pass this while it is fuzzed (its baseline with the
/// default minute-long loop and one client is about 100 MB).
const RSS_BOUND: u64 = 400 << 20;

fn count() -> usize {
    std::env::var("DEMON_FUZZ_SURFACE_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// xorshift64*: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `seed` with one to four bytes flipped, replaced, cut, duplicated or spliced in.
    fn mutate(&mut self, seed: &[u8], alphabet: &[u8]) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..1 + self.next() % 4 {
            let i = self.below(b.len());
            match self.next() % 6 {
                0 if !b.is_empty() => b[i] ^= 1 << (self.next() % 8),
                1 if !b.is_empty() => b[i] = alphabet[self.below(alphabet.len())],
                2 => b.truncate(i),
                3 if !b.is_empty() => {
                    let j = (i + self.below(8)).min(b.len());
                    let piece = b[i..j].to_vec();
                    b.splice(i..i, piece);
                }
                4 if !b.is_empty() => b[i] = self.next() as u8,
                _ => {
                    let n = self.below(16);
                    for _ in 0..n {
                        let c = self.next() as u8;
                        b.push(c);
                    }
                }
            }
        }
        b
    }
}

struct Server {
    child: Child,
    addr: String,
    osc: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_demon"))
            .args(["serve", "--port", "0", "--osc-port", "0", "--no-midi"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start demon serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut addr, mut osc) = (None, None);
        while addr.is_none() || osc.is_none() {
            let line = lines
                .next()
                .expect("demon serve ended before serving")
                .unwrap();
            if let Some(rest) = line.strip_prefix("osc: listening on udp://") {
                osc = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("serving the performer UI on http://") {
                addr = rest.split('/').next().map(str::to_string);
            }
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let keep = stderr.clone();
        // Keep reading stderr (the server must never block on a full pipe), and keep it.
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                keep.lock().unwrap().push(l);
            }
        });
        Self {
            child,
            addr: addr.unwrap(),
            osc: osc.unwrap(),
            stderr,
        }
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    fn tick(&self) -> u64 {
        let url = format!("http://{}/api/state", self.addr);
        let body = ureq::get(&url)
            .call()
            .expect("GET /api/state answers")
            .body_mut()
            .read_to_string()
            .unwrap();
        let state: Value = serde_json::from_str(&body).unwrap();
        state["tick"].as_u64().expect("a tick in the state")
    }

    /// Alive, ticking, bounded, no panic: after a surface was fuzzed.
    fn check(&mut self, surface: &str, audio: &AtomicU64) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server exited after the {surface} fuzz: {:?}",
            self.stderr.lock().unwrap()
        );
        // The fuzz may have paused playback (a valid `/demon/play 0`): play again.
        let url = format!("http://{}/api/control", self.addr);
        let answer = ureq::post(&url)
            .header("Content-Type", "application/json")
            .send(r#"{"type":"set_playing","playing":true}"#)
            .expect("the REST control answers");
        assert_eq!(
            answer.status().as_u16(),
            200,
            "play after the {surface} fuzz"
        );
        let (tick, frames) = (self.tick(), audio.load(Ordering::Acquire));
        let waited = Instant::now();
        while audio.load(Ordering::Acquire) <= frames && waited.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(self.tick() > tick, "ticks stopped after the {surface} fuzz");
        let rss = self.rss_bytes();
        println!(
            "{surface}: {} fuzzed, server RSS {} MB, the good client has {} audio frames",
            count(),
            rss >> 20,
            audio.load(Ordering::Acquire)
        );
        assert!(rss < RSS_BOUND, "{} MB after the {surface} fuzz", rss >> 20);
        assert!(
            audio.load(Ordering::Acquire) > frames,
            "the good client got no audio after the {surface} fuzz"
        );
        let log = self.stderr.lock().unwrap();
        assert!(
            !log.iter().any(|l| l.contains("panicked")),
            "a panic in the server: {log:?}"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OSC message: address, type tags and big-endian arguments, each padded to 4 bytes.
fn osc_message(address: &str, tags: &str, args: &[u8]) -> Vec<u8> {
    fn padded(s: &str) -> Vec<u8> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        b
    }
    let mut p = padded(address);
    p.extend(padded(&format!(",{tags}")));
    p.extend_from_slice(args);
    p
}

/// `depth` bundles, each holding the next, around one message.
fn nested_bundles(depth: usize) -> Vec<u8> {
    let mut p = osc_message("/demon/knob/guidance", "f", &2.5f32.to_be_bytes());
    for _ in 0..depth {
        let mut b = b"#bundle\0".to_vec();
        b.extend_from_slice(&1u64.to_be_bytes());
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend(p);
        p = b;
    }
    p
}

fn fuzz_osc(server: &Server) {
    let seeds = [
        osc_message("/demon/knob/denoise", "f", &0.5f32.to_be_bytes()),
        osc_message("/demon/knob/guidance", "d", &3.0f64.to_be_bytes()),
        osc_message("/demon/prompt", "s", b"techno\0\0"),
        osc_message("/demon/play", "i", &1i32.to_be_bytes()),
        nested_bundles(3),
        nested_bundles(40),
    ];
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = Rng(0x05c_f022);
    for i in 0..count() {
        let seed = &seeds[rng.below(seeds.len())];
        let p = rng.mutate(seed, b"/demon,fisd\0#");
        sock.send_to(&p, &server.osc).unwrap();
        // Paced so the kernel's receive buffer does not simply drop most of them.
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn fuzz_mcp(server: &Server) {
    let url = format!("http://{}/mcp", server.addr);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = |session: Option<&str>, body: &[u8]| {
        let mut req = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream");
        if let Some(s) = session {
            req = req.header("Mcp-Session-Id", s);
        }
        let mut resp = req.send(body).expect("the MCP endpoint answers");
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let _ = resp.body_mut().read_to_string();
        (resp.status().as_u16(), session)
    };
    let init = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"fuzz","version":"1"}}}"#;
    let (code, session) = post(None, init);
    assert_eq!(code, 200, "initialize");
    let session = session.expect("an MCP session id");
    post(
        Some(&session),
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    let seeds: [&[u8]; 6] = [
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_state","arguments":{}}}"#,
        br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"set_knob","arguments":{"name":"guidance","value":2.5}}}"#,
        br#"{"jsonrpc":"2.0","id":4,"method":"resources/list"}"#,
        br#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#,
        br#"[{"jsonrpc":"2.0","id":6,"method":"ping"},{"jsonrpc":"2.0","id":7,"method":"tools/list"}]"#,
    ];
    let mut rng = Rng(0x3c9_0fe1);
    let mut answered = [0usize; 6];
    for _ in 0..count() {
        let seed = seeds[rng.below(seeds.len())];
        let body = rng.mutate(seed, br#"{}[]":,0123456789e.aZ\"#);
        let (code, _) = post(Some(&session), &body);
        answered[(code / 100).min(5) as usize] += 1;
    }
    assert_eq!(answered[5], 0, "5xx answers: {answered:?}");
    assert!(answered[2] > 0 && answered[4] > 0, "{answered:?}");
}

async fn fuzz_websocket(url: &str) {
    let seeds: [&[u8]; 7] = [
        br#"{"id":1,"type":"set_knob","name":"guidance","value":2.5}"#,
        br#"{"id":2,"type":"set_curve","name":"ode_noise","curve":{"kind":"raw","values":[0.1,0.2]}}"#,
        br#"{"id":3,"type":"get_state"}"#,
        br#"{"id":4,"type":"upload","name":"x.wav"}"#,
        br#"{"id":5,"type":"resync"}"#,
        br#"{"id":6,"type":"set_prompt","prompt":"techno","bpm":128}"#,
        br#"{"id":7,"type":"set_knobs","values":{"guidance":2,"denoise":0.5}}"#,
    ];
    let mut rng = Rng(0x0f22 ^ 0x9e37_79b9_7f4a_7c15);
    // The last request: its answer says the server has read every message before it.
    const LAST: &str = r#"{"id":999999,"type":"ping"}"#;
    let connect = || async {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let (sink, mut stream) = ws.split();
        // Read (and drop) everything, or the server's queue for this client fills.
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m
                    && t.contains("999999")
                {
                    return true;
                }
            }
            false
        });
        (sink, reader)
    };
    let (mut sink, mut reader) = connect().await;
    let mut reconnects = 0;
    for i in 0..count() {
        let seed = seeds[rng.below(seeds.len())];
        let body = rng.mutate(seed, br#"{}[]":,0123456789e.aZ\"#);
        let msg = if i % 10 == 9 {
            Message::Binary(body.into())
        } else {
            Message::Text(String::from_utf8_lossy(&body).into_owned().into())
        };
        if sink.send(msg).await.is_err() {
            // Closed by the server (a protocol violation may close it): come back.
            reader.abort();
            reconnects += 1;
            (sink, reader) = connect().await;
        }
    }
    sink.send(Message::Text(LAST.into())).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("the server read the whole fuzz within 300 s")
        .unwrap();
    assert!(answered, "the last ping was answered");
    let _ = sink.close().await;
    println!("websocket: {reconnects} reconnects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_surface_survives_a_seeded_fuzz_and_a_good_client_keeps_its_audio() {
    let mut server = Server::start();
    let url = format!("ws://{}/ws", server.addr);
    // The well-behaved client: counts the audio frames it receives.
    let audio = Arc::new(AtomicU64::new(0));
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let counted = audio.clone();
    let good = tokio::spawn(async move {
        let (_sink, mut stream) = ws.split();
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Binary(_)) {
                counted.fetch_add(1, Ordering::AcqRel);
            }
        }
    });
    let t = Instant::now();
    fuzz_websocket(&url).await;
    println!("websocket fuzz took {:?}", t.elapsed());
    tokio::task::block_in_place(|| {
        server.check("websocket", &audio);
        let t = Instant::now();
        fuzz_osc(&server);
        println!("osc fuzz took {:?}", t.elapsed());
        server.check("osc", &audio);
        let t = Instant::now();
        fuzz_mcp(&server);
        println!("mcp fuzz took {:?}", t.elapsed());
        server.check("mcp", &audio);
    });
    assert!(!good.is_finished(), "the good client was disconnected");
    good.abort();
}
