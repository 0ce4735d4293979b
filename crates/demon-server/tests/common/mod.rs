//! What the server tests share: a real-time live session on the sketch backend.

use std::net::SocketAddr;
use std::time::Duration;

use demon_engine::{BackendSet, ReceptiveField};
use demon_live::core::{LiveCore, SessionConfig};
use demon_live::session::{RunOptions, SessionHandle, start};
use demon_server::frames::apply_frame;
use demon_server::protocol::{FLAG_ZSTD, FrameHeader, FrameKind};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The sketch backend on the CPU.
#[allow(dead_code)]
pub fn sketch() -> BackendSet {
    demon_sketch::backend()
}

/// Loopback server options without OSC or MIDI, with a MIDI map and a recordings folder of
/// this test's own (`suite` names the test file, `tag` the test) in the temp folder.
#[allow(dead_code)] // shared by the test files that start their own server, not by all
pub fn server_options(suite: &str, tag: &str) -> demon_server::ServerOptions {
    let mut o = demon_server::ServerOptions::loopback(0);
    o.osc_bind = None;
    o.midi = false;
    let id = format!("{}-{tag}", std::process::id());
    o.midi_map = std::env::temp_dir().join(format!("demon-{suite}-midi-{id}.json"));
    o.recordings_dir = std::env::temp_dir().join(format!("demon-{suite}-rec-{id}"));
    o
}

/// A session of `song_seconds` paced to the wall clock (a fixed receptive field skips the
/// start-up measurement).
pub fn session(song_seconds: f64) -> SessionHandle {
    session_with(
        song_seconds,
        RunOptions {
            realtime: true,
            ..Default::default()
        },
    )
}

/// [`session`] with other run options (a session file, ...).
pub fn session_with(song_seconds: f64, opts: RunOptions) -> SessionHandle {
    let cfg = SessionConfig {
        song_seconds,
        prompt: "house, 124 bpm".into(),
        receptive_field: Some(ReceptiveField {
            before: 25,
            after: 1,
        }),
        ..Default::default()
    };
    let core = LiveCore::new(cfg, sketch()).unwrap();
    start(core, opts).unwrap()
}

/// Hooks that refuse every library and file source and every offline render.
#[allow(dead_code)]
pub fn refusing_hooks() -> demon_server::Hooks {
    use demon_live::SessionError;
    demon_server::Hooks {
        resolve_source: std::sync::Arc::new(|spec: &str| {
            Err(SessionError::bad_source(spec, "none here"))
        }),
        library: Vec::new(),
        render_offline: std::sync::Arc::new(|_| {
            Err(SessionError::bad_value("render_offline", "not in tests"))
        }),
    }
}

/// A service (no HTTP listener) on a live 8 s session that has ticked, with its own
/// recordings folder (created) and refusing hooks.
#[allow(dead_code)]
pub async fn live_service(
    suite: &str,
    tag: &str,
) -> (SessionHandle, std::sync::Arc<demon_server::Service>) {
    let handle = session(8.0);
    wait_for("the first tick", || handle.state().is_some()).await;
    let opts = server_options(suite, tag);
    std::fs::create_dir_all(&opts.recordings_dir).unwrap();
    let svc = demon_server::Service::new(handle.clone(), opts, refusing_hooks());
    (handle, std::sync::Arc::new(svc))
}

/// Poll `done` every 50 ms for up to 10 s.
#[allow(dead_code)]
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A knob's target value in the session's last state.
#[allow(dead_code)]
pub fn target(handle: &SessionHandle, knob: &str) -> f64 {
    handle.state().map_or(f64::NAN, |s| s.targets[knob])
}

/// One HTTP request; the status and the body.
#[allow(dead_code)]
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    ct: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

#[allow(dead_code)]
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connected client's copy of the loop, kept by applying every binary frame.
#[allow(dead_code)] // shared by the test files that open pages, not by all
pub struct Page {
    pub ws: Ws,
    pub loop_audio: [Vec<f32>; 2],
    /// The `ready` message.
    pub ready: Value,
    /// Delta frames that came zstd-compressed (header flag bit 0).
    pub compressed_deltas: usize,
}

#[allow(dead_code)]
impl Page {
    /// Connect to `/ws{query}` (`""` or `"?compress=zstd"`), read `ready` and the full frame.
    pub async fn open(addr: SocketAddr, query: &str) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}"))
            .await
            .unwrap();
        let mut page = Page {
            ws,
            loop_audio: [Vec::new(), Vec::new()],
            ready: Value::Null,
            compressed_deltas: 0,
        };
        page.ready = page.next_text().await;
        assert_eq!(page.ready["type"], "ready", "{}", page.ready);
        let first = page.next_binary().await;
        assert_eq!(first, FrameKind::Full);
        page
    }

    pub async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(30), self.ws.next())
            .await
            .expect("a frame within 30 s")
            .expect("open")
            .unwrap()
    }

    pub async fn next_text(&mut self) -> Value {
        loop {
            if let Message::Text(t) = self.next().await {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    /// The next binary frame, applied; its kind.
    pub async fn next_binary(&mut self) -> FrameKind {
        loop {
            if let Message::Binary(b) = self.next().await {
                let h = apply_frame(&mut self.loop_audio, &b).expect("a valid frame");
                if FrameHeader::flags(&b).is_some_and(|f| f & FLAG_ZSTD != 0) {
                    self.compressed_deltas += 1;
                }
                if h.kind != FrameKind::Full {
                    assert!(
                        (h.start_sample as usize) < self.loop_audio[0].len(),
                        "a slice starts inside the loop the client holds"
                    );
                }
                return h.kind;
            }
        }
    }
}
