//! 50 WebSocket clients on one live session: the server forwards to them as async tasks (the
//! process stays under 20 threads), and connecting them costs the runner thread no copy of the
//! loop (measured by a counting allocator that records what the runner thread allocates).
//!
//! A resync flood from a client that never reads leaves the server's memory (RSS, read from
//! /proc/self/status: the server runs in this process) within a stated bound.
//!
//! The thread count and RSS are the process's, so the tests of this binary take `ALONE` and
//! run one at a time.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use demon_live::SessionError;
use demon_server::frames::apply_frame;
use demon_server::protocol::FrameKind;
use demon_server::{Hooks, ServerOptions};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// Allocations of the thread named `demon-runner` (the session's runner): total bytes and the
/// largest single allocation since the last `take`.
struct RunnerCounting;

static RUNNER_BYTES: AtomicU64 = AtomicU64::new(0);
static RUNNER_LARGEST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// 0 not known yet, 1 the runner, 2 another thread, 3 finding out (re-entered).
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

fn on_runner() -> bool {
    ROLE.try_with(|role| match role.get() {
        1 => true,
        2 | 3 => false,
        _ => {
            role.set(3);
            let runner = std::thread::current().name() == Some("demon-runner");
            role.set(if runner { 1 } else { 2 });
            runner
        }
    })
    .unwrap_or(false)
}

fn count(bytes: usize) {
    if on_runner() {
        RUNNER_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
        RUNNER_LARGEST.fetch_max(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting touches only
// atomics and a const-initialised thread-local (no allocation, no destructor).
unsafe impl GlobalAlloc for RunnerCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: RunnerCounting = RunnerCounting;

/// (bytes, largest allocation) on the runner since the last call.
fn take_runner_allocations() -> (u64, usize) {
    (
        RUNNER_BYTES.swap(0, Ordering::Relaxed),
        RUNNER_LARGEST.swap(0, Ordering::Relaxed),
    )
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Held by each test of this binary: what they measure is the whole process's.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident memory of this process (the server and the test clients), bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A server without OSC, MIDI or sources in front of `handle`.
async fn serve(handle: &demon_live::session::SessionHandle, tag: &str) -> SocketAddr {
    let mut opts = ServerOptions::loopback(0);
    opts.osc_bind = None;
    opts.midi = false;
    opts.recordings_dir =
        std::env::temp_dir().join(format!("demon-load-{tag}-{}", std::process::id()));
    let hooks = Hooks {
        resolve_source: Arc::new(|s: &str| Err(SessionError::bad_source(s, "none in this test"))),
        library: Vec::new(),
        render_offline: Arc::new(|_| Err(SessionError::bad_value("render", "none in this test"))),
    };
    demon_server::serve(opts, handle.clone(), hooks, std::future::pending())
        .await
        .unwrap()
}

/// Connect without a name lookup (which would run on a blocking thread of its own).
async fn connect(addr: SocketAddr) -> Ws {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap()
        .0
}

/// Read until a binary frame of `kind` arrives; returns its tick.
async fn until_frame(ws: &mut Ws, kind: FrameKind, buffer: &mut [Vec<f32>; 2]) -> u32 {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("closed")
            .unwrap();
        if let Message::Binary(b) = m {
            let h = apply_frame(buffer, &b).expect("a valid frame");
            if h.kind == kind {
                return h.tick;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_need_no_thread_each_and_no_loop_copy_on_the_runner() {
    let _alone = ALONE.lock().await;
    const CLIENTS: usize = 50;
    let song_seconds = 8.0;
    let handle = common::session(song_seconds);
    let addr = serve(&handle, "fifty").await;

    // Warm up past the first generation (which replaces the whole loop once).
    let loop_channel_bytes = (song_seconds * 48_000.0) as usize * std::mem::size_of::<f32>();
    for _ in 0..600 {
        if handle.state().unwrap().generations >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        handle.state().unwrap().generations >= 2,
        "the session warmed up"
    );

    // What the runner allocates in one second of ticks without connects.
    take_runner_allocations();
    let t0 = handle.state().unwrap().tick;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (quiet_bytes, quiet_largest) = take_runner_allocations();
    let quiet_ticks = handle.state().unwrap().tick - t0;

    // 50 clients connect; each gets `ready` and the whole loop.
    let threads_before = threads();
    let t0 = handle.state().unwrap().tick;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect(addr).await);
    }
    let mut buffers = vec![[Vec::new(), Vec::new()]; CLIENTS];
    for (ws, buf) in clients.iter_mut().zip(buffers.iter_mut()) {
        until_frame(ws, FrameKind::Full, buf).await;
        assert_eq!(buf[0].len(), loop_channel_bytes / 4);
    }
    let (connect_bytes, connect_largest) = take_runner_allocations();
    let connect_ticks = handle.state().unwrap().tick - t0;
    let threads_connected = threads();

    // Every client is live: slices keep arriving for each.
    for (ws, buf) in clients.iter_mut().zip(buffers.iter_mut()) {
        until_frame(ws, FrameKind::Delta, buf).await;
    }
    let threads_streaming = threads();
    println!(
        "threads: {threads_before} before, {threads_connected} with {CLIENTS} clients connected, {threads_streaming} while streaming"
    );
    println!(
        "runner allocations: quiet {quiet_ticks} ticks {quiet_bytes} B (largest {quiet_largest} B); \
         {CLIENTS} connects over {connect_ticks} ticks {connect_bytes} B (largest {connect_largest} B); \
         one loop channel is {loop_channel_bytes} B"
    );
    assert!(
        threads_streaming < 20 && threads_connected < 20,
        "{threads_connected} threads with {CLIENTS} clients: forwarding must not take a thread per client"
    );
    // A connect used to clone the loop on the runner: two allocations of one channel each.
    // Now the runner hands out a shared snapshot, and the largest thing it allocates while 50
    // clients connect is what it allocates in quiet ticks anyway (decode windows, patches),
    // well under one channel of the loop.
    assert!(
        quiet_largest < loop_channel_bytes / 2,
        "the measure can tell: quiet ticks allocate {quiet_largest} B at most"
    );
    assert!(
        connect_largest < loop_channel_bytes / 2,
        "the runner allocated {connect_largest} B at once during the connects (a copy of the loop is {loop_channel_bytes} B per channel)"
    );
    drop(clients);
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_flood_from_a_client_that_never_reads_keeps_memory_bounded() {
    use futures_util::SinkExt;
    let _alone = ALONE.lock().await;
    // The default song length of `demon serve`: a full frame is 11.5 MB.
    let song_seconds = 60.0;
    let full_frame_bytes = (song_seconds * 48_000.0) as u64 * 4;
    let handle = common::session(song_seconds);
    let addr = serve(&handle, "resync").await;
    // A client that reads, so the shared log and one connection's buffers exist before the
    // baseline.
    let mut reader = connect(addr).await;
    let mut buf = [Vec::new(), Vec::new()];
    until_frame(&mut reader, FrameKind::Full, &mut buf).await;
    until_frame(&mut reader, FrameKind::Delta, &mut buf).await;
    drop(buf);
    let before = rss_bytes();

    // 60 resyncs (the issue's flood: each used to queue another full frame) from a client
    // that never reads a byte.
    let mut flooder = connect(addr).await;
    for _ in 0..60 {
        flooder
            .send(Message::Text(r#"{"type":"resync"}"#.into()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the server queue what it would (ticks keep coming meanwhile).
    let mut peak = rss_bytes();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The reading client stays served.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(1), reader.next()).await
        {}
        peak = peak.max(rss_bytes());
    }
    let grown = peak.saturating_sub(before);
    println!(
        "RSS {} MB before, peak {} MB during 60 resyncs of a client that never reads (+{} MB; a full frame is {} MB)",
        before >> 20,
        peak >> 20,
        grown >> 20,
        full_frame_bytes >> 20
    );
    // What may wait for the flooder: its first full frame (in the socket writer's buffer and
    // as the shared frame) and 16 MiB of deltas; the old behaviour queued one frame per resync.
    let bound = 4 * full_frame_bytes + 16 * 1024 * 1024;
    assert!(
        grown < bound,
        "RSS grew {} MB during the flood (bound {} MB)",
        grown >> 20,
        bound >> 20
    );

    // Now it reads: the one full frame it was sent, perhaps one catch-up, and the resyncs over
    // the rate got `rate_limited`.
    let (mut fulls, mut limited) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, flooder.next()).await {
        match m {
            Message::Binary(b) => {
                let h = demon_server::protocol::FrameHeader::parse(&b).expect("a valid frame");
                if h.kind == FrameKind::Full {
                    fulls += 1;
                }
            }
            Message::Text(t) if t.contains("rate_limited") => limited += 1,
            _ => {}
        }
        if limited >= 50 && fulls >= 1 {
            break;
        }
    }
    println!("the flooder then read {fulls} full frames and {limited} rate_limited errors");
    assert!((1..=3).contains(&fulls), "{fulls} full frames");
    assert!(limited >= 50, "{limited} resyncs refused as rate_limited");
    handle.stop().unwrap();
}
