//! How the server runs: addresses, the access token, folders, and the limits every surface
//! enforces (through the service layer).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Size, rate and time limits. One place: every surface reads them from the service.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// JSON text frames and control bodies.
    pub max_text_bytes: usize,
    /// Binary frames and upload bodies.
    pub max_binary_bytes: usize,
    pub max_upload_seconds: f64,
    /// Samples over all channels of an upload (channels × rate × seconds), checked from the
    /// file's header before decoding: the cost of decoding, whatever the rate.
    pub max_upload_samples: u64,
    /// Control messages per second per WebSocket connection (token bucket, burst of the same
    /// size).
    pub max_controls_per_second: f64,
    /// How long a request waits for the runner (it answers between ticks).
    pub reply_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: 64 * 1024,
            max_binary_bytes: 64 * 1024 * 1024,
            max_upload_seconds: 1200.0,
            max_upload_samples: 1200 * 48_000 * 2,
            max_controls_per_second: 200.0,
            reply_timeout: Duration::from_secs(10),
        }
    }
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub bind: SocketAddr,
    pub token: Option<String>,
    /// Extra `Host` names accepted without a token (`--allow-host`); loopback names and the
    /// bound address always are.
    pub allow_hosts: Vec<String>,
    /// Browser origins other than the server's own that may use it (`--allow-origin`).
    pub allow_origins: Vec<String>,
    /// OSC listener address; `None` disables OSC.
    pub osc_bind: Option<SocketAddr>,
    pub midi: bool,
    pub midi_map: PathBuf,
    pub recordings_dir: PathBuf,
    /// The only folders file-path sources are read from (`--media-dir`; relative to the
    /// current directory), besides the recordings folder.
    pub media_dirs: Vec<PathBuf>,
    pub limits: Limits,
}

impl ServerOptions {
    pub fn loopback(port: u16) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            token: None,
            allow_hosts: Vec::new(),
            allow_origins: Vec::new(),
            osc_bind: Some(SocketAddr::from(([127, 0, 0, 1], port.wrapping_add(1)))),
            midi: true,
            midi_map: default_midi_map(),
            recordings_dir: std::env::temp_dir().join("demon-recordings"),
            media_dirs: vec![PathBuf::from("media")],
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
