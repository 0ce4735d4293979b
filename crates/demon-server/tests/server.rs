//! `demon serve` end to end in-process: a real WebSocket client, REST, tokens, OSC and MCP over
//! HTTP, against a live sketch session.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use demon_live::SessionError;
use demon_live::control::SourceSpec;
use demon_live::session::SessionHandle;
use demon_server::frames::apply_frame;
use demon_server::protocol::{FrameHeader, FrameKind};
use demon_server::{Hooks, ServerOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn session() -> SessionHandle {
    common::session(8.0)
}

fn hooks() -> Hooks {
    Hooks {
        resolve_source: Arc::new(|spec: &str| {
            let bad = |p: &str| SessionError::bad_source(spec, p);
            let style = spec
                .strip_prefix("library:")
                .ok_or_else(|| bad("only library sources in tests"))?;
            let style = style.split(':').next().unwrap_or("house");
            let r = demon_sketch::style::read_prompt(style);
            let i = r
                .style_weights
                .iter()
                .enumerate()
                .fold((0, 0.0), |a, (i, w)| if *w > a.1 { (i, *w) } else { a })
                .0;
            let song = demon_sketch::composer::compose(demon_sketch::composer::SongSpec {
                style: demon_sketch::Style::from_index(i).ok_or_else(|| bad("bad style"))?,
                bpm: 124.0,
                tonic: 9,
                minor: true,
                seed: 1,
                frames: 200,
            });
            let t =
                candle_core::Tensor::from_vec(song.latent, (1, 200, 64), &candle_core::Device::Cpu)
                    .map_err(SessionError::from)?;
            demon_live::core::latent_spec(spec, &t)
        }),
        library: vec!["library:funk:0".into()],
        render_offline: Arc::new(|_| {
            Err(SessionError::bad_value("render_offline", "not in tests"))
        }),
    }
}

async fn serve_with(opts: ServerOptions, handle: SessionHandle) -> SocketAddr {
    demon_server::serve(opts, handle, hooks(), std::future::pending())
        .await
        .unwrap()
}

fn test_opts(token: Option<&str>) -> ServerOptions {
    let mut o = ServerOptions::loopback(0);
    o.osc_bind = Some("127.0.0.1:0".parse().unwrap());
    o.midi = false;
    o.token = token.map(str::to_string);
    o.midi_map = std::env::temp_dir().join(format!("demon-midi-test-{}.json", std::process::id()));
    o.recordings_dir = std::env::temp_dir().join(format!("demon-rec-test-{}", std::process::id()));
    o
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A test client that keeps the text messages it passed over while waiting for another: the
/// echo of a change (sent by the session's forwarder) and the reply to it (sent by the
/// connection) travel on different paths, so either may arrive first.
struct Client {
    ws: Ws,
    passed_over: Vec<Value>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        Client {
            ws,
            passed_over: Vec::new(),
        }
    }

    /// The next frame of any kind; panics after 30 s without one or when the connection ends.
    async fn next_message(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(30), self.ws.next())
            .await
            .expect("timed out")
            .expect("closed")
            .unwrap()
    }

    /// The first text message (seen before or arriving within 30 s) that `want` accepts.
    async fn wait_for(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.passed_over.iter().position(&want) {
            return self.passed_over.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("closed")
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if want(&v) {
                    return v;
                }
                if v["type"] != "stats" {
                    self.passed_over.push(v);
                }
            }
        }
    }

    async fn next_json(&mut self, kind: &str) -> Value {
        self.wait_for(kind, |v| v["type"] == kind).await
    }

    async fn next_reply(&mut self, id: i64) -> Value {
        self.wait_for(&format!("the reply to {id}"), |v| {
            v["id"] == json!(id)
                && (v["type"] == "reply" || v["type"] == "error" || v["type"] == "pong")
        })
        .await
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_end_to_end() {
    let handle = session();
    let addr = serve_with(test_opts(None), handle.clone()).await;
    let mut ws = Client::connect(addr).await;

    // Handshake: ready, then the full buffer.
    let ready = ws.next_json("ready").await;
    assert_eq!(ready["sample_rate"], 48_000);
    assert_eq!(ready["samples"], 8 * 48_000);
    assert!(
        ready["knobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "denoise")
    );
    let mut buffer = [Vec::new(), Vec::new()];
    let full = loop {
        if let Message::Binary(b) = ws.next_message().await {
            break b;
        }
    };
    assert_eq!(
        apply_frame(&mut buffer, &full).unwrap().kind,
        FrameKind::Full
    );
    assert_eq!(buffer[0].len(), 8 * 48_000);

    // Slices arrive as deltas and keep the client's copy equal to the server's loop (to f16).
    let mut deltas = 0;
    let mut last_tick = 0;
    while deltas < 6 {
        let m = ws.next_message().await;
        if let Message::Binary(b) = m {
            let h: FrameHeader = apply_frame(&mut buffer, &b).expect("valid frame");
            if h.kind == FrameKind::Delta {
                deltas += 1;
                assert!(h.tick >= last_tick);
                last_tick = h.tick;
                assert!(h.num_samples > 0 && h.tick_ms > 0.0);
            }
        }
    }
    let (_, server) = tokio::task::spawn_blocking({
        let h = handle.clone();
        move || h.loop_audio(Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap();
    // The server may have patched more since; compare where the client is up to date: most
    // samples must agree to f16 precision.
    let agree = buffer[0]
        .iter()
        .zip(&server.to_planar()[0])
        .filter(|(a, b)| (*a - *b).abs() < 2e-3)
        .count();
    assert!(
        agree * 10 >= buffer[0].len() * 9,
        "client copy agrees on {agree}/{}",
        buffer[0].len()
    );

    // Control replies and echoes.
    ws.send(json!({"id": 1, "type": "control", "message": {"type": "set_knob", "name": "velocity_scale", "value": 1.4}})).await;
    let r = ws.next_reply(1).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert!(r["latency_ms"].as_f64().unwrap() >= 0.0);
    let echo = ws.next_json("applied").await;
    assert_eq!(echo["message"]["name"], "velocity_scale");

    // Errors, each answered while the connection and the session carry on.
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"id": 2, "type": "control", "message": {"type": "set_knob", "name": "wobble", "value": 1}}),
            "unknown_knob",
        ),
        (
            json!({"id": 3, "type": "control", "message": {"type": "set_knob", "name": "denoise", "value": "high"}}),
            "bad_message",
        ),
        (
            json!({"id": 4, "type": "control", "message": {"type": "set_curve", "name": "ode_noise", "curve": {"type": "raw", "values": []}}}),
            "bad_value",
        ),
        (
            json!({"id": 5, "type": "control", "message": {"type": "set_knob", "name": "depth", "value": 99}}),
            "bad_value",
        ),
        (json!({"id": 6, "type": "teleport"}), "unknown_type"),
        (json!({"id": 7, "type": "control"}), "bad_message"),
        (
            json!({"id": 11, "type": "control", "message": {"type": "set_curve", "name": "wobble", "curve": null}}),
            "unknown_curve",
        ),
        (
            json!({"id": 12, "type": "record", "action": "pause"}),
            "bad_message",
        ),
        (
            json!({"id": 13, "type": "midi_learn", "knob": "wobble"}),
            "unknown_knob",
        ),
    ];
    for (m, code) in bad {
        let id = m["id"].as_i64().unwrap();
        ws.send(m).await;
        let r = ws.next_reply(id).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["code"], code, "{r}");
        assert!(!r["error"].as_str().unwrap().is_empty());
    }
    // Malformed JSON (including a NaN, which JSON cannot carry) and an oversized frame.
    ws.send_raw(Message::Text("{\"type\": \"control\", \"message\": {\"type\": \"set_knob\", \"name\": \"denoise\", \"value\": NaN}}".into())).await;
    let r = ws.next_json("error").await;
    assert_eq!(r["code"], "bad_json");
    ws.send_raw(Message::Text("x".repeat(70 * 1024).into()))
        .await;
    let r = ws.next_json("error").await;
    assert_eq!(r["code"], "too_large");
    // A bad upload: decoded and rejected; the old source keeps playing.
    let before = handle.state().unwrap().source.clone();
    ws.send(json!({"id": 8, "type": "upload", "name": "song.mp3"}))
        .await;
    ws.send_raw(Message::Binary(
        b"this is not an mp3 at all".to_vec().into(),
    ))
    .await;
    let r = ws.next_reply(8).await;
    assert_eq!(r["code"], "bad_upload", "{r}");
    assert_eq!(handle.state().unwrap().source, before);
    // A binary frame nobody asked for.
    ws.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(ws.next_json("error").await["code"], "bad_message");

    // Still alive: ping, and slices keep coming.
    ws.send(json!({"id": 9, "type": "ping"})).await;
    assert_eq!(ws.next_reply(9).await["type"], "pong");
    let tick_before = handle.state().unwrap().tick;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        handle.state().unwrap().tick > tick_before,
        "the session kept ticking"
    );

    // A good upload (a real WAV) replaces the source.
    let audio = demon_engine::Audio::new(44_100, vec![vec![0.1; 44_100 * 2]]).unwrap();
    let wav = demon_audio::wav_bytes(&audio, demon_audio::WavFormat::Pcm16, None);
    ws.send(json!({"id": 10, "type": "upload", "name": "tone.wav"}))
        .await;
    ws.send_raw(Message::Binary(wav.into())).await;
    let r = ws.next_reply(10).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(handle.state().unwrap().source.as_deref(), Some("tone.wav"));
    // With a `role`, the upload is that reference and the source stays; the echo names it
    // without its audio.
    let wav = demon_audio::wav_bytes(&audio, demon_audio::WavFormat::Pcm16, None);
    ws.send(json!({"id": 11, "type": "upload", "name": "voice.wav", "role": "timbre"}))
        .await;
    ws.send_raw(Message::Binary(wav.into())).await;
    let r = ws.next_reply(11).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(r["source"], "voice.wav");
    let st = handle.state().unwrap();
    assert_eq!(st.timbre_reference.as_deref(), Some("voice.wav"));
    assert_eq!(st.source.as_deref(), Some("tone.wav"));
    let echo = ws
        .wait_for("the reference's echo", |v| {
            v["type"] == "applied" && v["message"]["type"] == "set_reference"
        })
        .await;
    assert_eq!(echo["message"]["role"], "timbre");
    assert_eq!(echo["message"]["source"]["name"], "voice.wav");
    let data = &echo["message"]["source"];
    assert!(
        data["data_b64"].as_str().is_none_or(str::is_empty)
            && data["channels"].as_array().is_none_or(Vec::is_empty),
        "the echo carries no audio: {echo}"
    );
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clients_see_echoes_and_are_unaffected_by_bad_input() {
    let handle = session();
    let addr = serve_with(test_opts(None), handle.clone()).await;
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    a.next_json("ready").await;
    b.next_json("ready").await;
    // A floods garbage; B keeps working and sees A's good change echoed.
    for _ in 0..20 {
        a.send_raw(Message::Text("{not json".into())).await;
    }
    a.send(json!({"id": 1, "type": "control", "message": {"type": "set_knob", "name": "ode_noise", "value": 0.3}})).await;
    let echo = b.next_json("applied").await;
    assert_eq!(echo["message"]["name"], "ode_noise");
    b.send(json!({"id": 2, "type": "ping"})).await;
    assert_eq!(b.next_reply(2).await["type"], "pong");
    handle.stop().unwrap();
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_when_set_and_non_loopback_needs_one() {
    let mut open = ServerOptions::loopback(0);
    open.bind = "0.0.0.0:0".parse().unwrap();
    assert!(open.check().unwrap_err().contains("token"));
    open.token = Some("short".into());
    assert!(open.check().is_err());
    open.token = Some("a-long-enough-token".into());
    assert!(open.check().is_ok());

    let handle = session();
    let addr = serve_with(test_opts(Some("sesame-open-please")), handle.clone()).await;
    assert_eq!(http(addr, "GET", "/api/state", None, "").await.0, 401);
    assert_eq!(
        http(addr, "GET", "/api/state", Some("wrong-token-xxxx"), "")
            .await
            .0,
        401
    );
    assert_eq!(
        http(addr, "GET", "/api/state", Some("sesame-open-please"), "")
            .await
            .0,
        200
    );
    assert_eq!(
        http(addr, "GET", "/api/state?token=sesame-open-please", None, "")
            .await
            .0,
        200
    );
    assert_eq!(http(addr, "GET", "/", None, "").await.0, 401);
    assert_eq!(http(addr, "POST", "/mcp", None, "{}").await.0, 401);
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .is_err(),
        "WebSocket without the token"
    );
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=sesame-open-please"))
            .await
            .is_ok()
    );
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_control_and_knobs() {
    let handle = session();
    let addr = serve_with(test_opts(None), handle.clone()).await;
    let (code, body) = http(addr, "GET", "/api/knobs", None, "").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("\"velocity_scale\"") && body.contains("lora:funk"),
        "sketch adapters listed"
    );
    let (code, body) = http(
        addr,
        "POST",
        "/api/control",
        None,
        r#"{"type":"set_knob","name":"guidance","value":2.5}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(handle.state().unwrap().targets["guidance"], 2.5);
    let (code, body) = http(
        addr,
        "POST",
        "/api/control",
        None,
        r#"{"type":"set_source","source":{"kind":"library","style":"funk","index":0}}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        handle.state().unwrap().source.as_deref(),
        Some("library:funk:0")
    );
    // Each failure has its own code, and the status that code maps to.
    for (body, status, code) in [
        (
            r#"{"type":"set_knob","name":"guidance","value":99}"#,
            422,
            "bad_value",
        ),
        (
            r#"{"type":"set_knob","name":"wobble","value":1}"#,
            422,
            "unknown_knob",
        ),
        (
            r#"{"type":"set_knob","name":"guidance"}"#,
            400,
            "bad_message",
        ),
        (r#"{"type":"set_knob""#, 400, "bad_message"),
    ] {
        let (got, text) = http(addr, "POST", "/api/control", None, body).await;
        assert_eq!(got, status, "{body}: {text}");
        let json = sse_json(&text);
        assert_eq!(
            (json["ok"].as_bool(), json["code"].as_str()),
            (Some(false), Some(code)),
            "{text}"
        );
    }
    let (code, text) = http(addr, "POST", "/api/control", None, &"x".repeat(70 * 1024)).await;
    assert_eq!(code, 413, "{text}");
    let (code, text) = http(addr, "GET", "/api/recordings/..%2Fetc%2Fpasswd", None, "").await;
    assert_eq!(code, 404, "{text}");
    assert_eq!(sse_json(&text)["code"], "not_found");
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_osc_sender_sets_a_knob() {
    // Bind our own OSC port so the test knows it.
    let handle = session();
    let mut opts = test_opts(None);
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let osc_addr = probe.local_addr().unwrap();
    drop(probe);
    opts.osc_bind = Some(osc_addr);
    serve_with(opts, handle.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let packet = rosc::encoder::encode(&rosc::OscPacket::Message(rosc::OscMessage {
        addr: "/demon/knob/ode_noise".into(),
        args: vec![rosc::OscType::Float(0.35)],
    }))
    .unwrap();
    sender.send_to(&packet, osc_addr).unwrap();
    sender
        .send_to(b"garbage that is not OSC", osc_addr)
        .unwrap();
    let bundle = rosc::encoder::encode(&rosc::OscPacket::Bundle(rosc::OscBundle {
        timetag: rosc::OscTime {
            seconds: 0,
            fractional: 1,
        },
        content: vec![rosc::OscPacket::Message(rosc::OscMessage {
            addr: "/demon/prompt".into(),
            args: vec![rosc::OscType::String("techno".into())],
        })],
    }))
    .unwrap();
    sender.send_to(&bundle, osc_addr).unwrap();
    let mut ok = false;
    for _ in 0..100 {
        let st = handle.state().unwrap();
        if (st.targets["ode_noise"] - 0.35).abs() < 1e-6 && st.prompt == "techno" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ok,
        "OSC knob and prompt reached the session: {:?}",
        handle.state().map(|s| (s.targets["ode_noise"], s.prompt))
    );
    handle.stop().unwrap();
}

fn sse_json(body: &str) -> Value {
    let json_part = body.split("\r\n\r\n").nth(1).unwrap_or(body);
    if let Some(d) = json_part
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find(|d| !d.trim().is_empty())
    {
        return serde_json::from_str(d.trim()).unwrap();
    }
    // Plain JSON (possibly chunked): take the first {...} line.
    let line = json_part
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("{}");
    serde_json::from_str(line.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_lists_tools_and_sets_a_knob() {
    let handle = session();
    let addr = serve_with(test_opts(None), handle.clone()).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let (code, body) = http(addr, "POST", "/mcp", None, &init.to_string()).await;
    assert_eq!(code, 200, "{body}");
    let session_id = body.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("mcp-session-id:")
            .map(|s| s.trim().to_string())
    });
    let sid_header = |s: &Option<String>| s.clone().unwrap_or_default();
    let post = |body: Value| {
        let sid = sid_header(&session_id);
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let b = body.to_string();
            let extra = if sid.is_empty() {
                String::new()
            } else {
                format!("Mcp-Session-Id: {sid}\r\nMcp-Protocol-Version: 2025-06-18\r\n")
            };
            let req = format!(
                "POST /mcp HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            String::from_utf8_lossy(&out).to_string()
        }
    };
    post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    let raw = post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).await;
    let tools = sse_json(&raw);
    assert!(tools["result"]["tools"].is_array(), "{raw}");
    let names: Vec<String> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "state",
        "list_knobs",
        "get_knob",
        "set_knob",
        "set_knobs",
        "set_prompt",
        "set_prompt_blend",
        "set_curve",
        "set_depth",
        "list_loras",
        "enable_lora",
        "disable_lora",
        "set_source",
        "start_recording",
        "stop_recording",
        "render_offline",
        "save_preset",
        "load_preset",
        "set_timbre_fixture",
        "set_timbre_audio",
        "clear_timbre",
        "set_structure_fixture",
        "set_structure_audio",
        "clear_structure",
        "list_sessions",
        "set_rcfg_mode",
        "analyze",
        "list_fixtures",
        "swap_to_fixture",
        "swap_to_audio",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "missing tool {want}: {names:?}"
        );
    }
    let r = sse_json(&post(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "set_knob", "arguments": {"name": "velocity_scale", "value": 0.6}}})).await);
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    assert_eq!(handle.state().unwrap().targets["velocity_scale"], 0.6);
    let r = sse_json(&post(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "set_knob", "arguments": {"name": "wobble", "value": 0.6}}})).await);
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    // References: a library song for the structure fader, then cleared; a file outside the
    // media folders is refused.
    let call = |id: u64, name: &str, arguments: serde_json::Value| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}});
    let r = sse_json(
        &post(call(
            5,
            "set_structure_fixture",
            json!({"style": "funk", "index": 0}),
        ))
        .await,
    );
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    let state = handle.state().unwrap();
    assert_eq!(state.structure_reference.as_deref(), Some("library:funk:0"));
    assert_eq!(state.timbre_reference, None);
    let r = sse_json(&post(call(6, "clear_structure", json!({}))).await);
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    assert_eq!(handle.state().unwrap().structure_reference, None);
    let r = sse_json(&post(call(7, "set_timbre_audio", json!({"path": "/etc/passwd"}))).await);
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    assert_eq!(handle.state().unwrap().timbre_reference, None);
    let _ = SourceSpec::None;

    // Issue 12, item 7: the tools DEMON's MCP server has, with the WebSocket semantics.
    let text = |r: &Value| -> Value {
        serde_json::from_str(r["result"]["content"][0]["text"].as_str().unwrap_or("null"))
            .unwrap_or(Value::Null)
    };
    let r = sse_json(&post(call(8, "list_sessions", json!({}))).await);
    let sessions = text(&r);
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(sessions[0]["id"], json!("live"), "{r}");
    let r = sse_json(&post(call(9, "set_rcfg_mode", json!({"mode": "full"}))).await);
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    assert_eq!(
        handle.state().unwrap().cfg_mode,
        demon_engine::CfgMode::Full
    );
    let r = sse_json(&post(call(10, "set_rcfg_mode", json!({"mode": "off"}))).await);
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    assert!(r.to_string().contains("guidance"), "{r}");
    let r = sse_json(&post(call(11, "list_fixtures", json!({}))).await);
    assert_eq!(text(&r), json!(["library:funk:0"]), "{r}");
    // Nothing plays yet: nothing to analyse.
    let r = sse_json(&post(call(12, "analyze", json!({}))).await);
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    assert!(r.to_string().contains("not_found"), "{r}");
    let r = sse_json(
        &post(call(
            13,
            "swap_to_fixture",
            json!({"style": "funk", "index": 0}),
        ))
        .await,
    );
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    assert_eq!(
        handle.state().unwrap().source.as_deref(),
        Some("library:funk:0")
    );
    let r = sse_json(&post(call(14, "analyze", json!({}))).await);
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    let a = text(&r);
    // The test library composes at 124 BPM; 8 s is short for the tempo's octave, so half or
    // double counts (the estimator's accuracy is tested in demon-audio and demon-cli).
    let bpm = a["bpm"].as_f64().unwrap_or(0.0);
    assert!(
        [62.0, 124.0, 248.0]
            .iter()
            .any(|t| ((bpm - t) / t).abs() < 0.02),
        "{a}"
    );
    assert!(
        a["integrated_lufs"].as_f64().is_some_and(f64::is_finite),
        "{a}"
    );
    assert_eq!(
        handle.state().unwrap().source_analysis.and_then(|a| a.bpm),
        Some(bpm)
    );
    let r = sse_json(
        &post(call(
            15,
            "set_prompt",
            json!({"time_signature": 3, "task": "text_to_music", "lyrics": "[Instrumental]"}),
        ))
        .await,
    );
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    let st = handle.state().unwrap();
    assert_eq!(
        (st.time_signature, st.task, st.lyrics.as_str()),
        (
            Some(3),
            demon_engine::GenerationTask::TextToMusic,
            "[Instrumental]"
        )
    );
    let r = sse_json(&post(call(16, "swap_to_audio", json!({"path": "/etc/passwd"}))).await);
    assert_eq!(r["result"]["isError"], json!(true), "{r}");

    // Issue 12, item 3: an automation lane, set and cleared; a hand move meanwhile is refused.
    let points = json!([{"at_s": 0.0, "value": 0.3}, {"at_s": 4.0, "value": 0.8}]);
    let r = sse_json(
        &post(call(
            17,
            "set_automation",
            json!({"knob": "feedback", "points": points, "interpolation": "step"}),
        ))
        .await,
    );
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    let lane = handle.state().unwrap().automation["feedback"].clone();
    assert_eq!(lane.points.len(), 2);
    assert_eq!(
        lane.interpolation,
        demon_live::automation::LaneInterpolation::Step
    );
    let r = sse_json(
        &post(call(
            18,
            "set_knob",
            json!({"name": "feedback", "value": 0.5}),
        ))
        .await,
    );
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    assert!(r.to_string().contains("automation lane"), "{r}");
    let r = sse_json(
        &post(call(
            19,
            "set_automation",
            json!({"knob": "depth", "points": points}),
        ))
        .await,
    );
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    let r = sse_json(&post(call(20, "clear_automation", json!({"knob": "feedback"}))).await);
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    assert!(handle.state().unwrap().automation.is_empty());
    handle.stop().unwrap();
}

/// Deltas come zstd-compressed to a client that asks in its upgrade (`/ws?compress=zstd`) and
/// plain to one that does not, and both copies of the loop end identical bit for bit; an
/// unknown compression is refused with a 400 that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_deltas_for_the_clients_that_ask() {
    let handle = session();
    let addr = serve_with(test_opts(None), handle.clone()).await;
    let mut plain = common::Page::open(addr, "").await;
    let mut packed = common::Page::open(addr, "?compress=zstd").await;
    assert_eq!(plain.ready["compression"], "none");
    assert_eq!(packed.ready["compression"], "zstd");
    for page in [&mut plain, &mut packed] {
        let mut deltas = 0;
        while deltas < 10 {
            if page.next_binary().await == FrameKind::Delta {
                deltas += 1;
            }
        }
    }
    assert_eq!(plain.compressed_deltas, 0);
    assert!(
        packed.compressed_deltas >= 10,
        "{}",
        packed.compressed_deltas
    );
    // Stopped, the loop stands still: what each page holds once the frames stop is the mirror.
    handle
        .control(
            0,
            demon_live::control::ControlMessage::SetPlaying { playing: false },
            Duration::from_secs(10),
        )
        .unwrap();
    for page in [&mut plain, &mut packed] {
        while tokio::time::timeout(Duration::from_millis(1500), page.next_binary())
            .await
            .is_ok()
        {}
    }
    let same = plain
        .loop_audio
        .iter()
        .flatten()
        .zip(packed.loop_audio.iter().flatten())
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same,
        "the compressed and the plain client hold the same loop"
    );

    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws?compress=brotli")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 400);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("compress=brotli"), "{body}");
        }
        other => panic!("compress=brotli was not refused: {:?}", other.map(|_| ())),
    }
    handle.stop().unwrap();
}
