//! # demon-server: `demon serve`
//!
//! One axum server on one port in front of one live session: the performer's web UI (embedded),
//! the WebSocket protocol (`docs/protocol.md`), a small REST surface, MCP at `/mcp` for agents,
//! OSC over UDP and hardware MIDI with MIDI learn.
//!
//! Layers, each module importing only those below it (`tests/layering.rs` checks):
//!
//! - surfaces: [`ws`], [`rest`], [`mcp`], [`osc`], [`midi`], with [`auth`] and the [`ui`]
//!   assets; this file holds the router and [`serve`];
//! - [`service`]: the operations the surfaces share (apply a control, uploads, recordings, the
//!   loop, state and catalog, offline renders, MIDI learn) and the limits;
//! - [`protocol`] (the wire types and error codes), [`frames`] (binary audio frames), [`options`]
//!   and [`midi_learn`] (the MIDI mapping);
//! - the session (`demon_live::session::SessionHandle`), whose runner applies every control
//!   between ticks.
//!
//! The server binds loopback by default; any other address requires an access token that every
//! HTTP, WebSocket and MCP request must carry.

pub mod auth;
pub mod frames;
pub mod mcp;
pub mod midi;
pub mod midi_learn;
pub mod options;
pub mod osc;
pub mod protocol;
pub mod rest;
pub mod service;
pub mod ui;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use demon_live::session::SessionHandle;

pub use options::{Limits, ServerOptions, default_midi_map};
pub use service::{Hooks, OfflineRender, Service};

/// Every route, behind the Host, Origin, body-type and token checks ([`auth::guard`]). Starts
/// the shared audio fanout ([`ws::AudioFanout`]), so it must run inside a tokio runtime.
pub fn router(svc: Arc<Service>) -> Router {
    let mcp_service = mcp::service(svc.clone());
    let fanout = ws::AudioFanout::start(svc.clone());
    Router::new()
        .route("/", get(ui::index))
        .route("/app.js", get(ui::app_js))
        .route("/worklet.js", get(ui::worklet_js))
        .route("/style.css", get(ui::style_css))
        .route("/vendor/fzstd.mjs", get(ui::fzstd_js))
        .route("/ws", get(ws::handler))
        .route("/api/health", get(rest::health))
        .route("/api/state", get(rest::state))
        .route("/api/knobs", get(rest::knobs))
        .route("/api/library", get(rest::library))
        .route("/api/analyze", get(rest::analyze))
        .route("/api/loras", get(rest::loras))
        .route("/api/loras/rescan", post(rest::rescan_loras))
        .route("/api/control", post(rest::control))
        .route("/api/preset", get(rest::get_preset).post(rest::load_preset))
        .route(
            "/api/source",
            post(rest::upload_source).layer(DefaultBodyLimit::max(svc.limits().max_binary_bytes)),
        )
        .route("/api/recordings/{name}", get(rest::recording))
        .route("/api/loop.wav", get(rest::loop_wav))
        .nest_service("/mcp", mcp_service)
        .layer(axum::Extension(fanout))
        .layer(axum::middleware::from_fn_with_state(
            svc.clone(),
            auth::guard,
        ))
        // Bodies without a Content-Length (chunked) stop at the same limits while read.
        .layer(DefaultBodyLimit::max(svc.limits().max_text_bytes))
        .with_state(svc)
}

/// Bind, announce, serve until `shutdown` resolves.
pub async fn serve(
    opts: ServerOptions,
    handle: SessionHandle,
    hooks: Hooks,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, String> {
    let mut opts = opts;
    opts.check()?;
    std::fs::create_dir_all(&opts.recordings_dir).map_err(|e| {
        format!(
            "cannot create the recordings folder `{}`: {e}",
            opts.recordings_dir.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The address actually bound (port 0 picks one): the Host check accepts it.
    opts.bind = addr;
    let load = opts.load.take();
    let svc = Arc::new(Service::new(handle, opts.clone(), hooks));
    opts.load = load;
    if let Some(osc) = opts.osc_bind {
        match tokio::net::UdpSocket::bind(osc).await {
            Ok(sock) => {
                tokio::spawn(osc::run(svc.clone(), sock));
            }
            Err(e) => eprintln!("osc: cannot listen on {osc} ({e}); OSC is off"),
        }
    }
    if opts.midi {
        midi::start(svc.clone());
    }
    if let Some(load) = opts.load.take() {
        // Applied like any control (a session file records it) before anyone connects.
        let ack = svc
            .apply(service::Origin::Rest, load)
            .await
            .map_err(|e| format!("--load: {e}"))?;
        for w in ack.warnings {
            eprintln!("--load: {w}");
        }
    }
    let router = router(svc.clone());
    tokio::spawn(accept_loop(listener, router, svc.limits(), shutdown));
    Ok(addr)
}

/// Accept HTTP/1.1 connections until `shutdown`, each served by hyper with the header read
/// timeout of `limits` (axum::serve sets none, so a peer could hold a connection open for ever
/// by never finishing its headers). At `shutdown` every connection finishes its request and
/// closes; upgraded WebSockets are no longer HTTP connections and end with the session.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment instead of spinning; open
                    // connections carry on.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // A timed-out or broken connection is the peer's problem, not the server's.
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
}
