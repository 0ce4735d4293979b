//! # demon-server: `demon serve`
//!
//! One axum server on one port in front of one live session: the performer's web UI (embedded),
//! the WebSocket protocol (`docs/protocol.md`), a small REST surface, MCP at `/mcp` for agents,
//! OSC over UDP and hardware MIDI with MIDI learn. Every front end turns what it receives into
//! the same `ControlMessage`s; the session's runner applies them between ticks.
//!
//! The server binds loopback by default; any other address requires an access token that every
//! HTTP, WebSocket and MCP request must carry.

pub mod api;
pub mod auth;
pub mod frames;
pub mod mcp;
pub mod midi;
pub mod osc;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use demon_live::control::SourceSpec;
use demon_live::session::SessionHandle;
use serde::{Deserialize, Serialize};

/// Size and rate limits per connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_text_bytes: usize,
    pub max_binary_bytes: usize,
    pub max_upload_seconds: f64,
    /// Control messages per second (token bucket, burst of the same size).
    pub max_controls_per_second: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: 64 * 1024,
            max_binary_bytes: 64 * 1024 * 1024,
            max_upload_seconds: 1200.0,
            max_controls_per_second: 200.0,
        }
    }
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub bind: SocketAddr,
    pub token: Option<String>,
    /// OSC listener address; `None` disables OSC.
    pub osc_bind: Option<SocketAddr>,
    pub midi: bool,
    pub midi_map: PathBuf,
    pub recordings_dir: PathBuf,
    pub limits: Limits,
}

impl ServerOptions {
    pub fn loopback(port: u16) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            token: None,
            osc_bind: Some(SocketAddr::from(([127, 0, 0, 1], port.wrapping_add(1)))),
            midi: true,
            midi_map: default_midi_map(),
            recordings_dir: std::env::temp_dir().join("demon-recordings"),
            limits: Limits::default(),
        }
    }

    /// Refuse to expose the session without a token.
    pub fn check(&self) -> Result<(), String> {
        let exposed =
            !self.bind.ip().is_loopback() || self.osc_bind.is_some_and(|o| !o.ip().is_loopback());
        match (&self.token, exposed) {
            (None, true) => Err(format!(
                "refusing to listen on {} without an access token: pass --token TOKEN (every request must then carry it)",
                if self.bind.ip().is_loopback() {
                    self.osc_bind.map(|o| o.to_string()).unwrap_or_default()
                } else {
                    self.bind.to_string()
                }
            )),
            (Some(t), _) if t.len() < 8 => {
                Err("the access token must be at least 8 characters".into())
            }
            _ => Ok(()),
        }
    }
}

/// Where MIDI learn mappings are kept by default.
pub fn default_midi_map() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("demon").join("midi.json")
}

/// An offline render asked for by an agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OfflineRender {
    /// Style words, mood, "124 bpm", "A minor"...
    pub prompt: String,
    /// Length in seconds (1..=600).
    pub seconds: f64,
    /// Noise seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// 1 = from noise; lower keeps more of the live source.
    #[serde(default)]
    pub denoise: Option<f32>,
    /// Use the live session's source.
    #[serde(default)]
    pub use_live_source: bool,
}

/// Backend-specific help the server needs without naming a backend.
/// Turns a source name into something the runner accepts.
pub type ResolveSource = Arc<dyn Fn(&str) -> Result<SourceSpec, String> + Send + Sync>;

/// Renders a song offline; returns the WAV's path.
pub type RenderOffline = Arc<dyn Fn(&OfflineRender) -> Result<PathBuf, String> + Send + Sync>;

#[derive(Clone)]
pub struct Hooks {
    /// Resolve a source name (`library:STYLE[:N]`, or a file path on the server) into something
    /// the runner accepts.
    pub resolve_source: ResolveSource,
    /// Built-in sources for the source menu.
    pub library: Vec<String>,
    /// Render a song offline (for agents); returns the WAV's path.
    pub render_offline: RenderOffline,
}

/// Shared by every request handler.
pub struct App {
    pub handle: SessionHandle,
    pub opts: ServerOptions,
    pub hooks: Hooks,
    pub next_client: AtomicU64,
    pub midi: Arc<midi::MidiState>,
}

/// Bind, announce, serve until `shutdown` resolves.
pub async fn serve(
    opts: ServerOptions,
    handle: SessionHandle,
    hooks: Hooks,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, String> {
    opts.check()?;
    std::fs::create_dir_all(&opts.recordings_dir).map_err(|e| {
        format!(
            "cannot create the recordings folder `{}`: {e}",
            opts.recordings_dir.display()
        )
    })?;
    let midi = Arc::new(midi::MidiState::load(&opts.midi_map));
    let app = Arc::new(App {
        handle,
        opts: opts.clone(),
        hooks,
        next_client: AtomicU64::new(1),
        midi,
    });
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.bind))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(osc) = opts.osc_bind {
        let a = app.clone();
        match tokio::net::UdpSocket::bind(osc).await {
            Ok(sock) => {
                tokio::spawn(osc::run(a, sock));
            }
            Err(e) => eprintln!("osc: cannot listen on {osc} ({e}); OSC is off"),
        }
    }
    if opts.midi {
        midi::start(app.clone());
    }
    let router = api::router(app.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
    });
    Ok(addr)
}
