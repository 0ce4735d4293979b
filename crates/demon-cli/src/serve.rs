//! `demon serve`: the live session behind the web UI, WebSocket, REST, MCP, OSC and MIDI.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use demon_engine::{BackendSet, Prompt};
use demon_live::core::LiveCore;
use demon_live::session::{RunOptions, start};
use demon_live::{BackendFacts, SessionError, SessionResult};
use demon_server::{Hooks, Limits, OfflineRender, ServerOptions};

use crate::args::LibraryArgs;
use crate::backends::{self, BackendArgs};
use crate::perform::{SessionArgs, choose_sink, missing_features};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; anything else needs --token).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// HTTP and WebSocket port (0 picks a free one).
    #[arg(long, default_value_t = 7878)]
    pub port: u16,
    /// Access token every request must carry (required to bind a non-loopback address).
    #[arg(long, env = "DEMON_TOKEN")]
    pub token: Option<String>,
    /// Another `Host` name clients may reach the server by without a token (repeatable);
    /// loopback names and the bound address are always accepted.
    #[arg(long = "allow-host")]
    pub allow_host: Vec<String>,
    /// A web page origin (`https://app.example`) other than the server's own that may use it
    /// from a browser (repeatable).
    #[arg(long = "allow-origin")]
    pub allow_origin: Vec<String>,
    /// OSC UDP port (on loopback unless --osc-bind says otherwise).
    #[arg(long = "osc-port", default_value_t = 7879)]
    pub osc_port: u16,
    /// Address the OSC listener binds (loopback by default; anything else needs --osc-allow).
    #[arg(long = "osc-bind", default_value = "127.0.0.1")]
    pub osc_bind: IpAddr,
    /// A sender network whose OSC packets are applied, `ADDR/PREFIX` (`192.168.1.0/24`,
    /// `fd00::/8`) or one address (repeatable). Loopback senders always are; packets from
    /// anyone else are dropped and counted in /api/health. OSC carries no token, so a
    /// non-loopback --osc-bind refuses to start without one.
    #[arg(long = "osc-allow", value_name = "ADDR/PREFIX")]
    pub osc_allow: Vec<demon_server::options::IpNet>,
    /// Do not listen for OSC.
    #[arg(long = "no-osc")]
    pub no_osc: bool,
    /// Do not open MIDI inputs.
    #[arg(long = "no-midi")]
    pub no_midi: bool,
    /// Keep the performer's depth even when ticks overrun real time (the overload indicator
    /// still shows; by default the depth is lowered one step at a time until ticks fit).
    #[arg(long = "no-degrade")]
    pub no_degrade: bool,
    /// Keep the decode lead at --lead-seconds (by default it starts there and adapts to what
    /// ticks, decode, delivery and the pages' playheads need: docs/performance.md).
    #[arg(long = "fixed-lead")]
    pub fixed_lead: bool,
    /// Where MIDI learn saves its mappings.
    #[arg(long = "midi-map")]
    pub midi_map: Option<PathBuf>,
    /// A folder file sources may be read from (repeatable; default `media/` under the current
    /// directory). The recordings folder always is one; anything else must be uploaded.
    #[arg(long = "media-dir")]
    pub media_dir: Vec<PathBuf>,
    /// Where recordings are written.
    #[arg(long = "recordings-dir")]
    pub recordings_dir: Option<PathBuf>,
    /// Record the session (every control event by tick) to this file for `demon replay`.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Start from a preset (what `GET /api/preset` and the UI's "Save preset" give) or from
    /// the last state of a session recording (`--record`): its control events are applied in
    /// order, its audio is not replayed. Loaded like any control, before clients connect.
    #[arg(long, value_name = "PRESET")]
    pub load: Option<PathBuf>,
    /// Play through the system audio device when there is one (otherwise the null sink).
    #[arg(long)]
    pub device: bool,
    #[command(flatten)]
    pub library: LibraryArgs,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let bind = SocketAddr::new(args.bind, args.port);
    let mut opts = ServerOptions::loopback(args.port);
    opts.bind = bind;
    opts.token = args.token.clone();
    opts.allow_hosts = args.allow_host.clone();
    opts.allow_origins = args.allow_origin.clone();
    opts.osc_bind = (!args.no_osc).then(|| SocketAddr::new(args.osc_bind, args.osc_port));
    opts.osc_allow = args.osc_allow.clone();
    opts.midi = !args.no_midi;
    if let Some(m) = &args.midi_map {
        opts.midi_map = m.clone();
    }
    if !args.media_dir.is_empty() {
        opts.media_dirs = args.media_dir.clone();
    }
    if let Some(r) = &args.recordings_dir {
        opts.recordings_dir = r.clone();
    }
    opts.limits = Limits::default();
    // Refuse unsafe binding, a taken port and bad session arguments before loading anything
    // (a model's warm-up can take a minute).
    opts.check().map_err(|e| anyhow!(e))?;
    port_free(bind)?;
    args.session.check()?;
    if opts.midi {
        // A hand-written map with a typo is named now, not found missing at the show.
        demon_server::midi_learn::read_map(&opts.midi_map)
            .map_err(|e| anyhow!("{e} (fix the file, or give another with --midi-map FILE)"))?;
    }

    let mut backend = backends::build(&args.backend)?;
    eprintln!("{}", backend.description);
    let mut config = args.session.config(&mut backend)?;
    config.adaptive_lead = !args.fixed_lead;
    let prompt = args.session.prompt();
    let frames = args.session.song_frames(&mut backend);
    let (sources, spare) = (backend.sources.clone(), backend.spare());
    let backend_name = backend.set.name.clone();
    if let Some(path) = &args.load {
        let facts = BackendFacts::of(&mut backend.set);
        let (message, warnings) = demon_live::restore::load_file(path, &facts)
            .with_context(|| format!("--load {}", path.display()))?;
        for w in warnings {
            eprintln!("--load: {w}");
        }
        opts.load = Some(message);
    }
    eprintln!("session: measuring the codec's receptive field...");
    let mut core = LiveCore::new(config, backend.set)?;
    let lora_dirs = args.library.dirs(core.adapter_files().is_some())?;
    let field = core.receptive_field();
    eprintln!(
        "session: receptive field {} frames before, {} after",
        field.before, field.after
    );
    let sink = choose_sink(args.device, "the browser plays the loop");
    if let Some(line) = missing_features(!args.no_midi) {
        eprintln!("{line}");
    }
    let handle = start(
        core,
        RunOptions {
            realtime: true,
            degrade: !args.no_degrade,
            sinks: vec![sink],
            session_file: args.record.clone(),
            lora_dirs,
            ..Default::default()
        },
    )
    .map_err(|e| anyhow!(e))?;

    let library = sources.library_names();
    let recordings = opts.recordings_dir.clone();
    let hooks = Hooks {
        resolve_source: Arc::new(move |spec: &str| sources.spec(spec, &prompt, frames)),
        library,
        render_offline: Arc::new(move |r: &OfflineRender| {
            render_offline(&backend_name, spare, &recordings, r)
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = stop_signal();
        let addr = demon_server::serve(opts, handle.clone(), hooks, shutdown)
            .await
            .map_err(|e| anyhow!(e))?;
        eprintln!("serving the performer UI on http://{addr}/ (MCP at /mcp); Ctrl-C stops");
        stop_signal().await;
        eprintln!("stopping...");
        let _ = tokio::task::spawn_blocking(move || handle.stop()).await;
        Ok::<(), anyhow::Error>(())
    })
}

/// Whether `addr` can be listened on now (the listener is closed again at once; the server
/// binds it after the model loads).
fn port_free(addr: SocketAddr) -> Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow!(
            "cannot listen on {addr}: the port is in use (another `demon serve`?); pick another with --port"
        )),
        Err(e) => Err(anyhow!("cannot listen on {addr}: {e}")),
    }
}

/// Ctrl-C or SIGTERM (what `kill` and service managers send): either stops the session the
/// same way, so recordings and the session file are finished.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// An offline render beside the live session, on a second instance of the backend (only when
/// one is cheap to make: one process holds one loaded model).
fn render_offline(
    backend_name: &str,
    spare: Option<fn() -> BackendSet>,
    dir: &std::path::Path,
    r: &OfflineRender,
) -> SessionResult<PathBuf> {
    let Some(make) = spare else {
        return Err(SessionError::UnsupportedByBackend {
            backend: backend_name.to_string(),
            what: "offline renders beside a live session (one process holds one loaded model; use `demon render`)".into(),
        });
    };
    if !(r.seconds.is_finite() && r.seconds > 0.0 && r.seconds <= 600.0) {
        return Err(SessionError::bad_value(
            "seconds",
            format!("{} is outside (0, 600]", r.seconds),
        ));
    }
    let mut backend = make();
    let facts = BackendFacts::of(&mut backend);
    let mut spec =
        demon_live::RenderSpec::new(Prompt::tags(r.prompt.clone()), facts.frames(r.seconds));
    spec.controls
        .set_knob("seed", r.seed.unwrap_or(42) as f64, &facts)?;
    spec.controls
        .set_knob("denoise", r.denoise.unwrap_or(1.0) as f64, &facts)?;
    let takes = demon_live::render(&mut backend, &spec, &mut |_, _| {})?;
    let take = takes
        .into_iter()
        .next()
        .ok_or_else(|| SessionError::backend("nothing rendered"))?;
    let path = dir.join(format!(
        "render-{}-{}.wav",
        r.seed.unwrap_or(42),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    demon_audio::write_wav(&path, &take.audio, demon_audio::WavFormat::Pcm16, None)
        .map_err(|e| SessionError::io(&path, e))?;
    Ok(path)
}
