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
        resolve_source: Arc::new(|spec: &str| {
            Err(SessionError::bad_source(spec, "no library in these tests"))
        }),
        library: Vec::new(),
        render_offline: Arc::new(|_| {
            Err(SessionError::bad_value("render_offline", "not in tests"))
        }),
    }
}

fn opts(tag: &str) -> ServerOptions {
    let mut o = ServerOptions::loopback(0);
    o.osc_bind = None;
    o.midi = false;
    let id = format!("{}-{tag}", std::process::id());
    o.midi_map = std::env::temp_dir().join(format!("demon-sec-midi-{id}.json"));
    o.recordings_dir = std::env::temp_dir().join(format!("demon-sec-rec-{id}"));
    o
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
