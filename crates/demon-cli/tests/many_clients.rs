//! Issue 15, bounded memory: 50 WebSocket clients on `demon serve`'s default minute-long loop
//! (an 11.5 MB full frame each) cost the server little, and its memory comes back when they
//! leave. The server runs as its own process so that its resident memory is measured alone
//! (`/proc/PID/status`), not with the clients'.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 50;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `demon serve` on a free port; its address.
fn start_server() -> (Child, String, std::thread::JoinHandle<()>) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_demon"))
        .args(["serve", "--port", "0", "--no-osc", "--no-midi"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demon serve");
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
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
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (server, addr, drain)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Read until a binary frame of `kind` (0 full, 2 delta: the header's first byte).
async fn until_kind(ws: &mut Ws, kind: u8) -> usize {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("timed out waiting for an audio frame")
            .expect("the server closed the connection")
            .expect("a WebSocket message");
        if let Message::Binary(b) = m
            && b.first() == Some(&kind)
        {
            return b.len();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_on_a_minute_loop_stay_under_600_mb_and_memory_returns() {
    let (mut server, addr, drain) = start_server();
    let pid = server.id();
    let url = format!("ws://{addr}/ws");
    let connect = || async {
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("WebSocket connect")
            .0
    };
    // One client first, so the shared frame log exists in the baseline.
    let mut first = connect().await;
    let full_bytes = until_kind(&mut first, 0).await;
    until_kind(&mut first, 2).await;
    drop(first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_bytes(pid);

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect().await);
    }
    for ws in clients.iter_mut() {
        assert_eq!(
            until_kind(ws, 0).await,
            full_bytes,
            "each gets the whole loop"
        );
    }
    for ws in clients.iter_mut() {
        until_kind(ws, 2).await;
    }
    let connected = rss_bytes(pid);
    drop(clients);
    let left = Instant::now();
    let mut after = rss_bytes(pid);
    while after > baseline + baseline / 10 && left.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss_bytes(pid);
    }
    println!(
        "server RSS {} MB before, {} MB with {CLIENTS} clients (full frame {:.1} MB), {} MB {:.1} s after they left",
        baseline >> 20,
        connected >> 20,
        full_bytes as f64 / 1e6,
        after >> 20,
        left.elapsed().as_secs_f64()
    );
    server.kill().ok();
    server.wait().ok();
    let _ = drain.join();
    assert!(
        full_bytes > 11_000_000,
        "a minute of loop: {full_bytes} bytes"
    );
    assert!(
        connected < 600 << 20,
        "{} MB with {CLIENTS} clients",
        connected >> 20
    );
    assert!(
        after <= baseline + baseline / 10,
        "{} MB after they left, baseline {} MB",
        after >> 20,
        baseline >> 20
    );
}
