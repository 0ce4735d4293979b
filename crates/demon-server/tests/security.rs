//! Issue 15: nothing a peer sends stops the session. Hostile packets, requests and headers
//! against a live sketch session on loopback: each is refused, and the session keeps going.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use demon_live::SessionError;
use demon_live::session::SessionHandle;
use demon_server::{Hooks, ServerOptions};

fn hooks() -> Hooks {
    Hooks {
        // Files (already checked against the media folders) become a second of a tone.
        resolve_source: Arc::new(|spec: &str| {
            if spec.starts_with("library:") {
                return Err(SessionError::bad_source(spec, "no library in these tests"));
            }
            let tone: Vec<f32> = (0..48_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
            Ok(demon_live::control::SourceSpec::Audio {
                name: spec.to_string(),
                channels: vec![tone.clone(), tone],
            })
        }),
        library: Vec::new(),
        render_offline: Arc::new(|_| {
            Err(SessionError::bad_value("render_offline", "not in tests"))
        }),
    }
}

fn opts(tag: &str) -> ServerOptions {
    common::server_options("sec", tag)
}

async fn serve(opts: ServerOptions, handle: SessionHandle) -> SocketAddr {
    demon_server::serve(opts, handle, hooks(), std::future::pending())
        .await
        .unwrap()
}

/// A free UDP port on loopback.
fn free_udp() -> SocketAddr {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// `levels` bundles, each holding the next; the innermost holds `/demon/knob/<knob> value`.
fn nested_bundles(levels: usize, knob: &str, value: f32) -> Vec<u8> {
    let mut p = rosc::encoder::encode(&rosc::OscPacket::Message(rosc::OscMessage {
        addr: format!("/demon/knob/{knob}"),
        args: vec![rosc::OscType::Float(value)],
    }))
    .unwrap();
    for _ in 0..levels {
        let mut b = b"#bundle\0".to_vec();
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&(p.len() as u32).to_be_bytes());
        b.extend_from_slice(&p);
        p = b;
    }
    p
}

async fn wait_target(handle: &SessionHandle, knob: &str, want: f64) -> bool {
    for _ in 0..100 {
        if handle
            .state()
            .is_some_and(|s| (s.targets[knob] - want).abs() < 1e-6)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The runner still ticks (within 20 s, for slow debug builds on a loaded machine).
async fn assert_ticks_advance(handle: &SessionHandle) {
    let tick = handle.state().unwrap().tick;
    for _ in 0..200 {
        if handle.state().unwrap().tick > tick {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("ticks stopped at {tick}: {:?}", handle.health());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_osc_bundles_are_refused_and_the_server_lives() {
    let handle = common::session(8.0);
    let mut o = opts("osc-depth");
    let osc = free_udp();
    o.osc_bind = Some(osc);
    serve(o, handle.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // D1: 2 200 levels (44 KB) overflowed a worker's stack. The knob inside must not apply.
    let d1 = nested_bundles(2_200, "ode_noise", 0.7);
    assert!(d1.len() > 40_000 && d1.len() < 65_000, "{}", d1.len());
    for _ in 0..3 {
        sender.send_to(&d1, osc).unwrap();
    }
    // The deepest a UDP datagram holds (65 507 bytes: 3 270 levels).
    let deepest = nested_bundles(3_270, "ode_noise", 0.7);
    assert!(deepest.len() <= 65_507, "{}", deepest.len());
    sender.send_to(&deepest, osc).unwrap();
    // A shallow bundle still works, and proves the listener survived what came before.
    sender
        .send_to(&nested_bundles(2, "ode_noise", 0.25), osc)
        .unwrap();
    assert!(
        wait_target(&handle, "ode_noise", 0.25).await,
        "the OSC listener survived and applied the shallow bundle: {:?}",
        handle.state().map(|s| s.targets["ode_noise"])
    );
    assert_ticks_advance(&handle).await;
    handle.stop().unwrap();
}

/// One raw HTTP/1.1 request with exactly these extra headers; the status and the whole reply.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Every route of the router, with the method it answers.
const ROUTES: [(&str, &str); 14] = [
    ("GET", "/"),
    ("GET", "/app.js"),
    ("GET", "/worklet.js"),
    ("GET", "/style.css"),
    ("GET", "/ws"),
    ("GET", "/api/health"),
    ("GET", "/api/state"),
    ("GET", "/api/knobs"),
    ("GET", "/api/library"),
    ("POST", "/api/control"),
    ("POST", "/api/source"),
    ("GET", "/api/recordings/take.wav"),
    ("GET", "/api/loop.wav"),
    ("POST", "/mcp"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_origins_are_refused_on_every_route() {
    let handle = common::session(8.0);
    let addr = serve(opts("origin"), handle.clone()).await;
    let own_host = addr.to_string();
    let json = ("Content-Type", "application/json");
    for (method, path) in ROUTES {
        // DNS rebinding: a page's own name resolving to loopback.
        let (code, text) = raw(
            addr,
            method,
            path,
            &[("Host", "evil.example:7878"), json],
            "{}",
        )
        .await;
        assert_eq!(code, 403, "{method} {path} with Host evil.example: {text}");
        assert!(text.contains("\"forbidden\""), "{text}");
        // Another web page driving a loopback server.
        let (code, text) = raw(
            addr,
            method,
            path,
            &[("Host", &own_host), ("Origin", "http://evil.example"), json],
            "{}",
        )
        .await;
        assert_eq!(
            code, 403,
            "{method} {path} with Origin evil.example: {text}"
        );
    }
    // The WebSocket upgrade from another origin.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/ws"),
    )
    .unwrap();
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!(
            "the upgrade from evil.example was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    // The server's own page, and tools that send no Origin, still work.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/ws"),
    )
    .unwrap();
    req.headers_mut()
        .insert("Origin", format!("http://{addr}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    let localhost = format!("localhost:{}", addr.port());
    for host in [own_host.as_str(), localhost.as_str()] {
        let (code, text) = raw(addr, "GET", "/api/health", &[("Host", host)], "").await;
        assert_eq!(code, 200, "{host}: {text}");
    }
    // A cross-site form can only send text/plain, form or multipart bodies.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let body = r#"{"type":"set_knob","name":"guidance","value":2.5}"#;
        let (code, text) = raw(
            addr,
            "POST",
            "/api/control",
            &[("Host", &own_host), ("Content-Type", ct)],
            body,
        )
        .await;
        assert_eq!(code, 415, "{ct}: {text}");
        assert!(text.contains("unsupported_media_type"), "{text}");
        let (code, _) = raw(
            addr,
            "POST",
            "/mcp",
            &[("Host", &own_host), ("Content-Type", ct)],
            "{}",
        )
        .await;
        assert_eq!(code, 415, "/mcp with {ct}");
    }
    assert_ne!(
        handle.state().unwrap().targets["guidance"],
        2.5,
        "nothing was applied"
    );
    let (code, text) = raw(
        addr,
        "POST",
        "/api/control",
        &[("Host", &own_host), json],
        r#"{"type":"set_knob","name":"guidance","value":2.5}"#,
    )
    .await;
    assert_eq!(code, 200, "{text}");
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_any_host_works_and_mcp_is_reachable_remotely() {
    let handle = common::session(8.0);
    let mut o = opts("token-host");
    o.token = Some("sesame-open-please".into());
    let addr = serve(o, handle.clone()).await;
    let bearer = ("Authorization", "Bearer sesame-open-please");
    let (code, text) = raw(
        addr,
        "GET",
        "/api/health",
        &[("Host", "studio.example:7878"), bearer],
        "",
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
    let (code, text) = raw(
        addr,
        "POST",
        "/mcp",
        &[
            ("Host", "studio.example:7878"),
            bearer,
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        init,
    )
    .await;
    assert_eq!(
        code, 200,
        "MCP through a non-loopback Host with the token: {text}"
    );
    // The wrong token of another length is refused like one of the same length.
    for wrong in [
        "x",
        "sesame-open-pleasx",
        "a-much-longer-wrong-token-than-the-real-one",
    ] {
        let auth = format!("Bearer {wrong}");
        let (code, _) = raw(
            addr,
            "GET",
            "/api/state",
            &[("Host", "studio.example"), ("Authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(code, 401, "{wrong}");
    }
    handle.stop().unwrap();
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_shows_in_health_and_the_session_plays_on() {
    let handle = common::session_with(
        8.0,
        demon_live::session::RunOptions {
            realtime: true,
            session_file: Some("/dev/full".into()),
            ..Default::default()
        },
    );
    let addr = serve(opts("full-disk"), handle.clone()).await;
    let host = addr.to_string();
    let mut health = String::new();
    for _ in 0..200 {
        health = raw(addr, "GET", "/api/health", &[("Host", &host)], "")
            .await
            .1;
        if health.contains("recording_error") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        health.contains("\"ok\":true") && health.contains("/dev/full"),
        "{health}"
    );
    assert_ticks_advance(&handle).await;
    let (code, text) = raw(
        addr,
        "POST",
        "/api/control",
        &[("Host", &host), ("Content-Type", "application/json")],
        r#"{"type":"set_knob","name":"guidance","value":2.5}"#,
    )
    .await;
    assert_eq!(code, 200, "{text}");
    handle.stop().unwrap();
}

/// An MCP session over raw HTTP: initialize, then one `tools/call`; the tool's result.
async fn mcp_call(addr: SocketAddr, tool: &str, arguments: serde_json::Value) -> serde_json::Value {
    let host = addr.to_string();
    let headers = |sid: &str| {
        let mut h = vec![
            ("Host".to_string(), host.clone()),
            ("Content-Type".to_string(), "application/json".to_string()),
            (
                "Accept".to_string(),
                "application/json, text/event-stream".to_string(),
            ),
        ];
        if !sid.is_empty() {
            h.push(("Mcp-Session-Id".into(), sid.into()));
            h.push(("Mcp-Protocol-Version".into(), "2025-06-18".into()));
        }
        h
    };
    let post = |sid: String, body: serde_json::Value| {
        let h = headers(&sid);
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            raw(addr, "POST", "/mcp", &h, &body.to_string()).await.1
        }
    };
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let reply = post(String::new(), init).await;
    let sid = reply
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("mcp-session-id:")
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    post(
        sid.clone(),
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    let reply = post(
        sid,
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}),
    )
    .await;
    let data = reply
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|d| d.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {reply}"));
    serde_json::from_str::<serde_json::Value>(data).unwrap()["result"].clone()
}

/// The error text a refusal carries on each surface.
fn error_text(v: &serde_json::Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sources_come_only_from_the_media_folders_with_one_refusal_everywhere() {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::json;
    let root = std::env::temp_dir().join(format!("demon-sec-media-{}", std::process::id()));
    let media = root.join("media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(root.join("x.wav"), b"RIFF outside").unwrap();
    std::fs::write(media.join("good.wav"), b"RIFF inside").unwrap();
    std::os::unix::fs::symlink(root.join("x.wav"), media.join("out.wav")).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(media.join("fifo.wav"))
            .status()
            .unwrap()
            .success()
    );
    let handle = common::session(8.0);
    let mut o = opts("media");
    o.media_dirs = vec![media.clone()];
    let svc_opts = o.clone();
    let addr = serve(o, handle.clone()).await;
    let host = addr.to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let osc_service = Arc::new(demon_server::Service::new(
        handle.clone(),
        svc_opts,
        hooks(),
    ));
    let refused = [
        "/etc/passwd",
        "../x.wav",
        "out.wav",
        "fifo.wav",
        "missing.wav",
    ];
    for (i, path) in refused.iter().enumerate() {
        let want = format!("source `{path}`: {}", demon_live::media::REFUSAL);
        // REST
        let body = json!({"type": "set_source", "source": {"kind": "file", "path": path}});
        let (code, text) = raw(
            addr,
            "POST",
            "/api/control",
            &[("Host", &host), ("Content-Type", "application/json")],
            &body.to_string(),
        )
        .await;
        assert_eq!(code, 422, "{path}: {text}");
        let rest: serde_json::Value =
            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
        assert_eq!(rest["code"], "bad_source");
        assert!(error_text(&rest).contains(&want), "REST {path}: {rest}");
        // WebSocket
        let id = 100 + i as i64;
        let msg = json!({"id": id, "type": "control", "message": body});
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            msg.to_string().into(),
        ))
        .await
        .unwrap();
        let reply = loop {
            let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .expect("a reply")
                .expect("open")
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["id"] == json!(id) {
                    break v;
                }
            }
        };
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(error_text(&reply), error_text(&rest), "WebSocket {path}");
        // MCP
        let r = mcp_call(addr, "set_source", json!({"source": path})).await;
        assert_eq!(r["isError"], json!(true), "{r}");
        let text = r["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.contains(&error_text(&rest)), "MCP {path}: {text}");
        // OSC (`/demon/source s`), through the same service call its listener makes
        let m = rosc::OscMessage {
            addr: "/demon/source".into(),
            args: vec![rosc::OscType::String(path.to_string())],
        };
        let control = demon_server::osc::to_control(&m).unwrap();
        let e = osc_service
            .apply(demon_server::service::Origin::Osc, control)
            .await
            .unwrap_err();
        assert_eq!(e.message, error_text(&rest), "OSC {path}");
    }
    assert_eq!(handle.state().unwrap().source, None, "nothing was loaded");
    // A regular file inside the folder is taken (the test hook turns any file into a tone).
    let (code, text) = raw(
        addr,
        "POST",
        "/api/control",
        &[("Host", &host), ("Content-Type", "application/json")],
        r#"{"type":"set_source","source":{"kind":"file","path":"good.wav"}}"#,
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(
        handle
            .state()
            .unwrap()
            .source
            .is_some_and(|s| s.ends_with("media/good.wav")),
    );
    assert_ticks_advance(&handle).await;
    handle.stop().unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_from_content_length_before_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let handle = common::session(8.0);
    let addr = serve(opts("content-length"), handle.clone()).await;
    for (path, ct) in [
        ("/api/control", "application/json"),
        ("/api/source", "audio/wav"),
        ("/mcp", "application/json"),
    ] {
        // 2e9 bytes announced, none sent: the answer must come without waiting for the body.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ct}\r\nContent-Length: 2000000000\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answered before the body arrived")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{path}: {text}");
        assert!(
            text.contains("2000000000 bytes is over the limit"),
            "{text}"
        );
    }
    // A control body over the text limit is refused up front too (not after 64 MiB).
    let big = "x".repeat(70 * 1024);
    let (code, text) = raw(
        addr,
        "POST",
        "/api/control",
        &[
            ("Host", &addr.to_string()),
            ("Content-Type", "application/json"),
        ],
        &big,
    )
    .await;
    assert_eq!(code, 413, "{text}");
    assert_ticks_advance(&handle).await;
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_websocket_opcode_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let handle = common::session(4.0);
    let addr = serve(opts("opcode"), handle.clone()).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = s.read(&mut head).await.unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"),
        "upgraded"
    );
    // Opcode 0x3 is reserved (RFC 6455 §5.2): a masked, empty frame of it.
    s.write_all(&[0x83, 0x80, 1, 2, 3, 4]).await.unwrap();
    // The server closes: reading ends (after whatever it had queued) within the timeout.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the connection was closed");
    assert_ticks_advance(&handle).await;
    handle.stop().unwrap();
}

/// `/api/health` as JSON.
async fn health(addr: SocketAddr) -> serde_json::Value {
    let host = addr.to_string();
    let (code, text) = raw(addr, "GET", "/api/health", &[("Host", &host)], "").await;
    assert_eq!(code, 200, "{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Read until the server closes the connection; what it sent before closing. Panics if the
/// connection is still open after `patience`.
async fn until_closed(s: &mut tokio::net::TcpStream, patience: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection was still open after {patience:?} (read {} bytes)",
                got.len()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_headers_and_idle_connections_are_closed_and_the_server_stays_reachable() {
    use tokio::io::AsyncWriteExt;
    const SLOW: usize = 300;
    let handle = common::session(8.0);
    let mut o = opts("slow-headers");
    // Short, so the test is quick; the patience below is many times longer and still far
    // below anything else that could close a connection (there is nothing else).
    o.limits.header_read_timeout = Duration::from_secs(2);
    let patience = Duration::from_secs(20);
    let addr = serve(o, handle.clone()).await;
    let host = addr.to_string();
    assert_eq!(
        health(addr).await["limits"]["header_read_timeout_ms"],
        2000,
        "the timeout is shown with the other limits"
    );

    // 300 connections that start a request and never finish its headers.
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /api/health HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").as_bytes())
            .await
            .unwrap();
        slow.push(s);
    }
    // One that trickles a header byte every 200 ms: bytes do not restart the clock.
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(format!("GET /api/health HTTP/1.1\r\nHost: {host}\r\n").as_bytes())
        .await
        .unwrap();
    let trickler = tokio::spawn(async move {
        for _ in 0..200 {
            if trickle.write_all(b"x").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    // One that finished a request on a keep-alive connection and then stays quiet.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET /api/health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();

    // While they hang, a good request is answered.
    let (code, text) = raw(addr, "GET", "/api/health", &[("Host", &host)], "").await;
    assert_eq!(
        code, 200,
        "a good request answers beside {SLOW} partial ones: {text}"
    );

    // Every partial one is closed, without an answer to the request it never finished.
    for s in &mut slow {
        let got = until_closed(s, patience).await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    assert!(
        trickler.await.unwrap(),
        "the trickling connection was closed while it still sent"
    );
    // The idle one got its answer, then was closed.
    let got = String::from_utf8_lossy(&until_closed(&mut idle, patience).await).to_string();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    // And the server still answers afterwards.
    let (code, text) = raw(addr, "GET", "/api/health", &[("Host", &host)], "").await;
    assert_eq!(code, 200, "{text}");
    assert_ticks_advance(&handle).await;
    handle.stop().unwrap();
}

/// This machine's address on its default route, if it has one that is not loopback: a sender
/// bound to it reaches a wildcard listener from outside loopback.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // Connecting a UDP socket sends nothing; it only picks the route's source address.
    probe.connect("198.51.100.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn knob_packet(knob: &str, value: f32) -> Vec<u8> {
    nested_bundles(0, knob, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osc_beyond_loopback_needs_an_allow_list_and_other_senders_are_dropped() {
    let handle = common::session(8.0);

    // A wildcard OSC address without an allow-list: start-up is refused.
    let mut o = opts("osc-open");
    o.osc_bind = Some("0.0.0.0:0".parse().unwrap());
    let e = demon_server::serve(o, handle.clone(), hooks(), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        e.contains("without a sender allow-list") && e.contains("--osc-allow"),
        "{e}"
    );

    let Some(outside) = non_loopback_address() else {
        // The filter itself is tested in `options.rs`; this part needs a second address.
        eprintln!("no non-loopback address on this machine: skipping the real-UDP part");
        handle.stop().unwrap();
        return;
    };
    let port = free_udp().port();
    let osc = SocketAddr::from(([0, 0, 0, 0], port));
    let mut o = opts("osc-allow");
    o.osc_bind = Some(osc);
    // A network this machine is not in.
    o.osc_allow = vec!["198.51.100.0/24".parse().unwrap()];
    let addr = serve(o, handle.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(health(addr).await["osc_dropped_packets"], 0);

    let from_outside = std::net::UdpSocket::bind(SocketAddr::new(outside, 0)).unwrap();
    let target = SocketAddr::new(outside, port);
    for _ in 0..3 {
        from_outside
            .send_to(&knob_packet("ode_noise", 0.7), target)
            .unwrap();
    }
    let mut dropped = serde_json::Value::Null;
    for _ in 0..100 {
        dropped = health(addr).await["osc_dropped_packets"].clone();
        if dropped == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dropped, 3, "the 3 packets from {outside} were counted");
    // Loopback senders always pass; the dropped knob never applied.
    let local = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    local
        .send_to(&knob_packet("ode_noise", 0.3), ("127.0.0.1", port))
        .unwrap();
    assert!(wait_target(&handle, "ode_noise", 0.3).await);
    assert_eq!(health(addr).await["osc_dropped_packets"], 3);

    // The same sender inside the list is applied.
    let port = free_udp().port();
    let mut o = opts("osc-allowed");
    o.osc_bind = Some(SocketAddr::from(([0, 0, 0, 0], port)));
    o.osc_allow = vec![outside.to_string().parse().unwrap()];
    let addr = serve(o, handle.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    from_outside
        .send_to(
            &knob_packet("ode_noise", 0.6),
            SocketAddr::new(outside, port),
        )
        .unwrap();
    assert!(wait_target(&handle, "ode_noise", 0.6).await);
    assert_eq!(health(addr).await["osc_dropped_packets"], 0);
    handle.stop().unwrap();
}
