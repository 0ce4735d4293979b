//! `Session`: the runner thread that owns a `LiveCore` (pipeline, backend, loop buffer) and the
//! handle every front end uses to drive it.
//!
//! Front ends send `ControlMessage`s over a channel; the runner drains them only between ticks,
//! so nothing changes mid-step (the race that silenced sections of the Python reference cannot
//! happen). Each message gets a reply: applied, or an error naming the problem with the session
//! left as it was. Played audio goes to the sinks, fresh windows and status to the event bus,
//! and every applied event, stamped with its tick, to the session file when recording.
//!
//! Controls never queue: knob sets coalesce per knob (of several values for one knob waiting at
//! a tick boundary only the last valid one is applied and recorded; the earlier ones are answered
//! as superseded at that tick), and a control that waited longer than [`CONTROL_MAX_WAIT`] (or
//! three tick durations, when ticks are slower) is refused instead of applied late. Answers go
//! through one-shot replies, blocking or awaited, so an async caller holds no thread.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bus::{
    AudioSlice, Event, EventBus, ReplyError, ReplyReceiver, ReplySender, Subscriber, reply_channel,
};
use crate::control::{ControlMessage, SourceSpec};
use crate::core::sources::{PreparedSource, prepare_source};
pub use crate::core::{LiveCore, SessionConfig, SessionProbe, SessionState};
use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;
use crate::record::{ClockEntry, SessionLine, SessionWriter};
use crate::sink::{AudioSink, WavRecorder};

/// How the runner runs.
pub struct RunOptions {
    /// Pace ticks to the wall clock (one tick per `samples_per_tick` of audio). Off for offline
    /// replays, which run as fast as the machine allows.
    pub realtime: bool,
    pub sinks: Vec<Box<dyn AudioSink>>,
    /// Record the performance to this session file.
    pub session_file: Option<PathBuf>,
    /// Scripted events: (tick, message), applied before that tick.
    pub script: Vec<(u64, ControlMessage)>,
    /// Stop after this many ticks.
    pub max_ticks: Option<u64>,
    /// Recorded clock to follow (replays): lead and depth cap per tick.
    pub clock: Vec<ClockEntry>,
    /// With `realtime`: keep real time when ticks overrun their budget by lowering the depth
    /// one step at a time, and give it back when there is room (`crate::budget`).
    pub degrade: bool,
    /// Event queue length per subscriber.
    pub bus_capacity: usize,
    /// The longest a source change may take to prepare beside the ticks
    /// ([`SOURCE_PREPARE_MAX`] unless told otherwise).
    pub source_prepare_max: Duration,
    /// LoRA folders (`crate::lora_library`), scanned when the session starts and on
    /// [`SessionHandle::rescan_loras`].
    pub lora_dirs: Vec<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            realtime: true,
            sinks: Vec::new(),
            session_file: None,
            script: Vec::new(),
            max_ticks: None,
            clock: Vec::new(),
            degrade: false,
            bus_capacity: 256,
            source_prepare_max: SOURCE_PREPARE_MAX,
            lora_dirs: Vec::new(),
        }
    }
}

/// The longest a control waits for a tick boundary before it is refused rather than applied
/// late (when ticks take longer than a third of this, three tick durations instead).
pub const CONTROL_MAX_WAIT: Duration = Duration::from_secs(2);

/// The longest a source change may take to prepare beside the ticks before it is refused, by
/// default (a 20-minute source takes the sketch codec one to three minutes on a 2-core
/// machine, depending on what else runs).
pub const SOURCE_PREPARE_MAX: Duration = Duration::from_secs(180);

/// A source change being prepared on a fork of the codec, beside the tick loop. Its result is
/// applied at the first tick boundary after it is ready, like any control arriving then.
struct PendingSource {
    origin: u64,
    message: ControlMessage,
    reply: Option<ReplySender<SessionResult<u64>>>,
    started: Instant,
    /// Refused when not ready after this long.
    max: Duration,
    result: Receiver<SessionResult<Option<PreparedSource>>>,
}

impl PendingSource {
    /// Start preparing `message`'s source on `codec` in a thread of its own; `None` (and the
    /// error answered) when no thread can be started.
    fn start(
        origin: u64,
        message: ControlMessage,
        reply: Option<ReplySender<SessionResult<u64>>>,
        facts: BackendFacts,
        mut codec: Box<dyn demon_engine::Codec>,
        max: Duration,
    ) -> Option<Self> {
        let refuse = |reply: Option<ReplySender<SessionResult<u64>>>, e: SessionError| {
            if let Some(r) = reply {
                r.send(Err(e));
            }
            None
        };
        let ControlMessage::SetSource { source } = &message else {
            let e = SessionError::bad_value("source preparation", "not a set_source control");
            return refuse(reply, e);
        };
        let spec = source.clone();
        let (tx, result) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("demon-source".into())
            .spawn(move || {
                // The runner may have stopped or moved on; then nobody needs the result.
                let _ = tx.send(prepare_source(&spec, &facts, codec.as_mut()));
            });
        if let Err(e) = spawned {
            let e = SessionError::Backend(format!("cannot start a source preparation thread: {e}"));
            return refuse(reply, e);
        }
        Some(Self {
            origin,
            message,
            reply,
            started: Instant::now(),
            max,
            result,
        })
    }

    /// The outcome, once there is one: the prepared source, its error, or a refusal when it
    /// took longer than its limit ([`RunOptions::source_prepare_max`]).
    fn poll(&self) -> Option<SessionResult<Option<PreparedSource>>> {
        match self.result.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) if self.started.elapsed() > self.max => {
                Some(Err(SessionError::Timeout(format!(
                    "preparing the source took longer than {} s; it was not applied",
                    self.max.as_secs()
                ))))
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(SessionError::Backend(
                "the source preparation thread stopped without an answer".into(),
            ))),
        }
    }

    /// Answer a change overtaken by a later source change.
    fn supersede(self) {
        if let Some(r) = self.reply {
            r.send(Err(SessionError::Superseded(
                "a later source change came while this source was being prepared; it was not applied"
                    .into(),
            )));
        }
    }
}

/// The longest a library adapter may take to load beside the ticks before it is given up.
pub const LORA_LOAD_MAX: Duration = Duration::from_secs(120);

/// A library adapter being read on a thread of its own.
struct AdapterLoad {
    id: String,
    path: PathBuf,
    metadata: demon_engine::AdapterMetadata,
    started: Instant,
    result: Receiver<demon_engine::Result<demon_engine::LoadedAdapter>>,
}

/// A control waiting for library adapters to be loaded.
struct ParkedControl {
    origin: u64,
    message: ControlMessage,
    reply: Option<ReplySender<SessionResult<u64>>>,
    queued: Instant,
}

/// Library adapters loading beside the ticks and the controls that wait for them, in the
/// order they came: a control naming an adapter not loaded yet waits (and so does any later
/// control naming a waiting adapter, or a preset), the others go on at once.
#[derive(Default)]
struct AdapterLoads {
    loading: Vec<AdapterLoad>,
    parked: std::collections::VecDeque<ParkedControl>,
}

impl AdapterLoads {
    /// Whether `message` must wait behind the controls already waiting (it names one of their
    /// adapters, or it is a preset, which sets every adapter).
    fn holds_back(&self, message: &ControlMessage) -> bool {
        if self.parked.is_empty() {
            return false;
        }
        if matches!(message, ControlMessage::LoadPreset { .. }) {
            return true;
        }
        let ids = message.adapter_ids();
        self.parked
            .iter()
            .any(|p| p.message.adapter_ids().iter().any(|x| ids.contains(x)))
    }

    /// Start reading library adapter `id` on a thread (nothing when it is loading already).
    fn start(
        &mut self,
        core: &mut LiveCore,
        files: &Arc<dyn demon_engine::AdapterFiles>,
        id: &str,
    ) -> SessionResult<()> {
        if self.loading.iter().any(|l| l.id == id) {
            return Ok(());
        }
        let entry = core
            .library()
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound {
                what: "LoRA adapter".into(),
                name: id.to_string(),
            })?;
        if let crate::lora_library::LibraryStatus::Failed { error } = &entry.status {
            return Err(SessionError::bad_value(
                format!("LoRA `{id}`"),
                format!("its files cannot be used ({error}); fix them and rescan"),
            ));
        }
        let (tx, result) = std::sync::mpsc::channel();
        let (files, path) = (files.clone(), entry.path.clone());
        std::thread::Builder::new()
            .name("demon-lora".into())
            .spawn(move || {
                // The runner may have stopped; then nobody needs the adapter.
                let _ = tx.send(files.load(&path));
            })
            .map_err(|e| {
                SessionError::Backend(format!("cannot start a LoRA loading thread: {e}"))
            })?;
        core.set_library_status(id, crate::lora_library::LibraryStatus::Loading);
        self.loading.push(AdapterLoad {
            id: id.to_string(),
            path: entry.path,
            metadata: entry.metadata,
            started: Instant::now(),
            result,
        });
        Ok(())
    }

    /// Park `message` until `needs` are loaded, starting their loads; refused at once (and
    /// answered) when one cannot be loaded.
    fn park(
        &mut self,
        core: &mut LiveCore,
        files: &Arc<dyn demon_engine::AdapterFiles>,
        control: ParkedControl,
        needs: &[String],
    ) {
        for id in needs {
            if let Err(e) = self.start(core, files, id) {
                if let Some(r) = control.reply {
                    r.send(Err(e));
                }
                return;
            }
        }
        self.parked.push_back(control);
    }

    /// At a tick boundary: install what finished loading (recorded as `install_lora`), give up
    /// what failed (answering the controls waiting for it), then apply the waiting controls
    /// whose adapters are all in, in the order they came.
    fn poll(&mut self, core: &mut LiveCore, applier: &mut Applier<'_, '_>) {
        let mut i = 0;
        while i < self.loading.len() {
            let l = &self.loading[i];
            let outcome = match l.result.try_recv() {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(TryRecvError::Empty) if l.started.elapsed() > LORA_LOAD_MAX => Err(format!(
                    "loading took longer than {} s",
                    LORA_LOAD_MAX.as_secs()
                )),
                Err(TryRecvError::Empty) => {
                    i += 1;
                    continue;
                }
                Err(TryRecvError::Disconnected) => {
                    Err("the loading thread stopped without an answer".to_string())
                }
            };
            let l = self.loading.remove(i);
            let message = ControlMessage::InstallLora {
                id: l.id.clone(),
                path: l.path.to_string_lossy().into_owned(),
                metadata: l.metadata.clone(),
            };
            let installed = outcome.and_then(|loaded| {
                applier
                    .apply_with(core, 0, &message, None, l.started, |core| {
                        core.install_adapter(&l.id, &l.path, l.metadata.clone(), loaded)
                    })
                    .map_err(|e| e.to_string())
            });
            match installed {
                Ok(_) => applier.shared.announce(format!(
                    "LoRA `{}` loaded in {:.1} s",
                    l.id,
                    l.started.elapsed().as_secs_f64()
                )),
                Err(error) => {
                    applier
                        .shared
                        .announce(format!("LoRA `{}` cannot be loaded: {error}", l.id));
                    core.set_library_status(
                        &l.id,
                        crate::lora_library::LibraryStatus::Failed {
                            error: error.clone(),
                        },
                    );
                    for p in std::mem::take(&mut self.parked) {
                        if p.message.adapter_ids().contains(&l.id.as_str()) {
                            if let Some(r) = p.reply {
                                r.send(Err(SessionError::bad_value(
                                    format!("LoRA `{}`", l.id),
                                    format!("it cannot be loaded: {error}"),
                                )));
                            }
                        } else {
                            self.parked.push_back(p);
                        }
                    }
                    applier.shared.refresh_state(core);
                }
            }
        }
        while self
            .parked
            .front()
            .is_some_and(|p| core.adapters_to_load(&p.message).is_empty())
        {
            let Some(p) = self.parked.pop_front() else {
                break;
            };
            if let ControlMessage::InstallLora { .. } = p.message {
                // A preload: the install itself was the change.
                if let Some(r) = p.reply {
                    r.send(Ok(applier.tick));
                }
                continue;
            }
            let _answered = applier.apply(core, p.origin, p.message, p.reply, p.queued);
        }
    }
}

/// Load the library adapters `message` needs now, on this thread (scripted and offline
/// sessions, where nothing plays while they load), each recorded as its `install_lora`.
fn install_now(
    core: &mut LiveCore,
    files: &Arc<dyn demon_engine::AdapterFiles>,
    message: &ControlMessage,
    mut recorded: impl FnMut(&mut LiveCore, ControlMessage),
) -> SessionResult<()> {
    for id in core.adapters_to_load(message) {
        let entry = core
            .library()
            .get(&id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound {
                what: "LoRA adapter".into(),
                name: id.clone(),
            })?;
        let loaded = files
            .load(&entry.path)
            .map_err(|e| SessionError::bad_value(format!("LoRA `{id}`"), e.to_string()))?;
        let m = core.install_adapter(&id, &entry.path, entry.metadata, loaded)?;
        recorded(core, m);
    }
    Ok(())
}

/// A front end's `install_lora` (a preload) names a library adapter by its id and path: the
/// only files a peer can make the session read are those the library registered.
fn check_preload(core: &LiveCore, message: &ControlMessage) -> SessionResult<()> {
    let ControlMessage::InstallLora { id, path, .. } = message else {
        return Ok(());
    };
    match core.library().get(id) {
        Some(e) if e.path == Path::new(path) => Ok(()),
        _ => Err(SessionError::NotFound {
            what: "LoRA library adapter with this id and path".into(),
            name: format!("{id} ({path})"),
        }),
    }
}

enum Command {
    Control {
        origin: u64,
        message: ControlMessage,
        reply: Option<ReplySender<SessionResult<u64>>>,
        /// When it was queued (for [`CONTROL_MAX_WAIT`]).
        queued: Instant,
    },
    StartRecording {
        path: PathBuf,
        float: bool,
        reply: ReplySender<SessionResult<()>>,
    },
    StopRecording {
        reply: ReplySender<StopAnswer>,
    },
    LoopAudio {
        reply: ReplySender<(u64, LoopSnapshot)>,
    },
    /// A client first played a sample reflecting control `control` at `played`.
    Heard {
        control: u64,
        played: Instant,
    },
    /// A client's playhead was at `client_sample` when the slice of `tick` arrived.
    Arrival {
        tick: u64,
        client_sample: u64,
    },
    Preset {
        reply: ReplySender<crate::preset::Preset>,
    },
    /// A scan of the LoRA library, made on the caller's thread, to take in.
    Rescan {
        scan: crate::lora_library::Scan,
        reply: ReplySender<crate::lora_library::RescanReport>,
    },
    Stop,
}

/// The most a client's `heard` report may say it played before it sent (a larger one is a
/// stale report or a wrong clock, refused).
pub const HEARD_MAX_AGO: Duration = Duration::from_secs(10);

/// What stopping a recording answers: the file and its length in seconds, if one was running.
type StopAnswer = SessionResult<Option<(PathBuf, f64)>>;

/// The answer to one queued control: the tick it was applied before, or why not. A future
/// (await it in the caller's own timeout) or read from a thread with [`wait`](Self::wait).
pub struct ControlReply(ReplyReceiver<SessionResult<u64>>);

impl ControlReply {
    /// Block this thread for the answer, at most `timeout`.
    pub fn wait(self, timeout: Duration) -> SessionResult<u64> {
        SessionHandle::wait(self.0, timeout, "waiting for the next tick")?
    }
}

impl std::future::Future for ControlReply {
    type Output = SessionResult<u64>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|_| SessionError::Stopped(None)).and_then(|r| r))
    }
}

fn loop_reply_error(e: ReplyError) -> SessionError {
    match e {
        ReplyError::Timeout => SessionError::Timeout("the session did not answer".into()),
        ReplyError::Dropped => SessionError::Stopped(None),
    }
}

/// What went wrong in a running session, for health endpoints: `None` fields are healthy.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionHealth {
    /// The error of the latest tick while ticks fail (cleared by the next good tick).
    pub tick_error: Option<String>,
    /// Why the session file or the WAV recording was stopped (a failed write); the session
    /// itself kept playing.
    pub recording_error: Option<String>,
}

impl SessionHealth {
    /// Ticks run (a failed recording does not make the session unhealthy, only that recording).
    pub fn ok(&self) -> bool {
        self.tick_error.is_none()
    }
}

/// What a finished session reports.
#[derive(Clone, Debug)]
pub struct SessionSummary {
    pub ticks: u64,
    pub generations: u64,
    pub played_seconds: f64,
    /// Script events the session refused (each was announced when it came up).
    pub rejected_events: u64,
}

/// The runner thread; joining it gives the session's summary or its error.
type RunnerThread = JoinHandle<SessionResult<SessionSummary>>;

pub use crate::loopbuf::LoopSnapshot;

/// Handle to a running session. Cheap to clone; every clone drives the same session.
#[derive(Clone)]
pub struct SessionHandle {
    tx: SyncSender<Command>,
    bus: Arc<EventBus>,
    state: Arc<Mutex<Option<SessionState>>>,
    probe: Arc<SessionProbe>,
    health: Arc<Mutex<SessionHealth>>,
    join: Arc<Mutex<Option<RunnerThread>>>,
    sample_rate: u32,
    source_prepare_max: Duration,
    /// The LoRA folders and how the backend reads them (`None`: the backend cannot add
    /// adapters at run time).
    library: Option<crate::lora_library::LoraLibrary>,
}

impl SessionHandle {
    /// Scan the LoRA folders again, on this thread, and have the session take the result in
    /// at its next tick boundary: new files are registered (not loaded), vanished ones dropped
    /// unless loaded. Answers what changed.
    pub fn rescan_loras(
        &self,
        timeout: Duration,
    ) -> SessionResult<crate::lora_library::RescanReport> {
        let library = self
            .library
            .as_ref()
            .ok_or_else(|| SessionError::UnsupportedByBackend {
                backend: self.state().map(|s| s.backend).unwrap_or_default(),
                what: "LoRA adapters added at run time".into(),
            })?;
        let mut scan = library.scan();
        if library.dirs().is_empty() {
            scan.problems
                .push("no LoRA folders: start the session with --lora-dir DIR".into());
        }
        let (reply, rx) = reply_channel();
        self.command(Command::Rescan { scan, reply })?;
        Self::wait(rx, timeout, "the session to take in the rescan")
    }

    /// The LoRA folders this session scans.
    pub fn lora_dirs(&self) -> &[PathBuf] {
        self.library.as_ref().map_or(&[], |l| l.dirs())
    }

    /// How long a source change may take to prepare before the session refuses it.
    pub fn source_prepare_max(&self) -> Duration {
        self.source_prepare_max
    }

    /// Send a control message and wait until the runner applied or rejected it (at most
    /// `timeout`). Returns the tick it was applied before.
    pub fn control(
        &self,
        origin: u64,
        message: ControlMessage,
        timeout: Duration,
    ) -> SessionResult<u64> {
        self.queue_control(origin, message)?.wait(timeout)
    }

    /// Queue a control now (controls are applied in the order they were queued) and return the
    /// wait for its answer: `busy` at once when the runner's queue is full.
    pub fn queue_control(
        &self,
        origin: u64,
        message: ControlMessage,
    ) -> SessionResult<ControlReply> {
        let (reply, rx) = reply_channel();
        self.command(Command::Control {
            origin,
            message,
            reply: Some(reply),
            queued: Instant::now(),
        })?;
        Ok(ControlReply(rx))
    }

    /// [`control`](Self::control) for async callers: the future holds no thread while the
    /// runner finishes its tick (wrap it in the caller's own timeout).
    pub async fn control_async(&self, origin: u64, message: ControlMessage) -> SessionResult<u64> {
        self.queue_control(origin, message)?.await
    }

    /// Send without waiting for the reply.
    pub fn send(&self, origin: u64, message: ControlMessage) -> SessionResult<()> {
        self.command(Command::Control {
            origin,
            message,
            reply: None,
            queued: Instant::now(),
        })
    }

    /// Queue a command for the runner: `busy` when its queue is full, `stopped` when it ended.
    fn command(&self, cmd: Command) -> SessionResult<()> {
        self.tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => SessionError::Busy("too many pending controls".into()),
            TrySendError::Disconnected(_) => SessionError::Stopped(None),
        })
    }

    /// The runner's answer, or `timeout` / `stopped`.
    fn wait<T>(rx: ReplyReceiver<T>, timeout: Duration, waiting_for: &str) -> SessionResult<T> {
        rx.recv_timeout(timeout).map_err(|e| match e {
            ReplyError::Timeout => SessionError::Timeout(waiting_for.to_string()),
            ReplyError::Dropped => SessionError::Stopped(None),
        })
    }

    /// The runner's answer, awaited (`stopped` if it dropped the request).
    async fn answer<T>(rx: ReplyReceiver<T>) -> SessionResult<T> {
        rx.await.map_err(|_| SessionError::Stopped(None))
    }

    pub fn subscribe(&self) -> Subscriber {
        self.bus.subscribe()
    }

    pub fn bus(&self) -> &Arc<EventBus> {
        &self.bus
    }

    /// The state after the last tick.
    pub fn state(&self) -> Option<SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The whole loop buffer at the next tick boundary, with that tick's index (clients start
    /// from it, then apply the audio slices of later ticks). The snapshot shares the runner's
    /// storage: asking costs the runner one pointer copy, whatever the song's length.
    pub fn loop_audio(&self, timeout: Duration) -> SessionResult<(u64, LoopSnapshot)> {
        self.ask_loop_audio()?
            .recv_timeout(timeout)
            .map_err(loop_reply_error)
    }

    /// [`loop_audio`](Self::loop_audio) for async callers: the future holds no thread while the
    /// runner finishes its tick (wrap it in the caller's own timeout).
    pub async fn loop_audio_async(&self) -> SessionResult<(u64, LoopSnapshot)> {
        self.ask_loop_audio()?.await.map_err(loop_reply_error)
    }

    /// The performer-set state as a preset, read between two ticks (so it holds every control
    /// applied before the call).
    pub async fn preset_async(&self) -> SessionResult<crate::preset::Preset> {
        let (reply, rx) = reply_channel();
        self.command(Command::Preset { reply })?;
        Self::answer(rx).await
    }

    fn ask_loop_audio(&self) -> SessionResult<ReplyReceiver<(u64, LoopSnapshot)>> {
        let (reply, rx) = reply_channel();
        self.command(Command::LoopAudio { reply })?;
        Ok(rx)
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// A client reports that it first played a sample reflecting control `control` (an id
    /// of a `Reflects` event) `ago_ms` before this call (negative: it will be played that much
    /// later, an output latency the client knows). The played instant is taken on this
    /// server's clock now, so the error is the report's one-way transit (docs/protocol.md).
    pub fn heard(&self, control: u64, ago_ms: f64) -> SessionResult<()> {
        let max = HEARD_MAX_AGO.as_secs_f64() * 1000.0;
        if !(ago_ms.is_finite() && ago_ms.abs() <= max) {
            return Err(SessionError::bad_value(
                "heard",
                format!("ago_ms {ago_ms} is outside ±{max} ms"),
            ));
        }
        let now = Instant::now();
        let d = Duration::from_secs_f64(ago_ms.abs() / 1000.0);
        let played = if ago_ms >= 0.0 {
            now.checked_sub(d).unwrap_or(now)
        } else {
            now + d
        };
        self.command(Command::Heard { control, played })
    }

    /// A client reports where its playhead was (`client_sample`) when the slice of `tick`
    /// arrived: what the adaptive lead learns the clients' needs from (`crate::lead`).
    pub fn arrival(&self, tick: u64, client_sample: u64) -> SessionResult<()> {
        self.command(Command::Arrival {
            tick,
            client_sample,
        })
    }

    pub fn probe(&self) -> &Arc<SessionProbe> {
        &self.probe
    }

    /// Failing ticks and failed recordings, as the runner last saw them.
    pub fn health(&self) -> SessionHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn start_recording(&self, path: &Path, float: bool) -> SessionResult<()> {
        let rx = self.ask_start_recording(path, float)?;
        Self::wait(rx, Duration::from_secs(10), "the recording to start")?
    }

    /// [`start_recording`](Self::start_recording) for async callers.
    pub async fn start_recording_async(&self, path: &Path, float: bool) -> SessionResult<()> {
        Self::answer(self.ask_start_recording(path, float)?).await?
    }

    fn ask_start_recording(
        &self,
        path: &Path,
        float: bool,
    ) -> SessionResult<ReplyReceiver<SessionResult<()>>> {
        let (reply, rx) = reply_channel();
        self.command(Command::StartRecording {
            path: path.to_path_buf(),
            float,
            reply,
        })?;
        Ok(rx)
    }

    /// Stop recording; returns the file and its length in seconds.
    pub fn stop_recording(&self) -> SessionResult<Option<(PathBuf, f64)>> {
        let rx = self.ask_stop_recording()?;
        Self::wait(rx, Duration::from_secs(10), "the recording to stop")?
    }

    /// [`stop_recording`](Self::stop_recording) for async callers.
    pub async fn stop_recording_async(&self) -> SessionResult<Option<(PathBuf, f64)>> {
        Self::answer(self.ask_stop_recording()?).await?
    }

    fn ask_stop_recording(&self) -> SessionResult<ReplyReceiver<StopAnswer>> {
        let (reply, rx) = reply_channel();
        self.command(Command::StopRecording { reply })?;
        Ok(rx)
    }

    /// Ask the runner to stop and wait for it.
    pub fn stop(&self) -> SessionResult<SessionSummary> {
        let _ = self.tx.try_send(Command::Stop);
        self.join()
    }

    /// Wait for the runner to end (after `max_ticks`, or `stop`).
    pub fn join(&self) -> SessionResult<SessionSummary> {
        let handle = self.join.lock().unwrap_or_else(|e| e.into_inner()).take();
        match handle {
            Some(h) => h
                .join()
                .map_err(|_| SessionError::Stopped(Some("the session runner panicked".into())))?,
            None => Err(SessionError::Stopped(Some(
                "the session was already joined".into(),
            ))),
        }
    }
}

/// Run a session to its end on the calling thread (offline performances and replays: there is
/// nobody to send controls, only the script). Same loop as the runner thread.
pub fn run_blocking(mut core: LiveCore, mut opts: RunOptions) -> SessionResult<SessionSummary> {
    open_library(&mut core, &opts)?;
    let (_tx, rx) = sync_channel::<Command>(1);
    let bus = EventBus::new(opts.bus_capacity);
    let state = Mutex::new(None);
    let writer = match &opts.session_file {
        Some(p) => Some(SessionWriter::create(p, core.config())?),
        None => None,
    };
    let health = Mutex::new(SessionHealth::default());
    let shared = Shared {
        bus: &bus,
        state: &state,
        health: &health,
    };
    run(&mut core, &mut opts, rx, writer, shared)
}

/// The session's LoRA library: its folders scanned into the core. `None` when the backend
/// cannot add adapters at run time (then folders are refused).
fn open_library(
    core: &mut LiveCore,
    opts: &RunOptions,
) -> SessionResult<Option<crate::lora_library::LoraLibrary>> {
    let Some(files) = core.adapter_files() else {
        if let Some(d) = opts.lora_dirs.first() {
            return Err(SessionError::UnsupportedByBackend {
                backend: core.facts().name.clone(),
                what: format!("LoRA folders (`{}`)", d.display()),
            });
        }
        return Ok(None);
    };
    let library = crate::lora_library::LoraLibrary::new(opts.lora_dirs.clone(), files);
    let report = core.merge_library(library.scan());
    for p in &report.problems {
        eprintln!("demon: LoRA library: {p}");
    }
    if !opts.lora_dirs.is_empty() {
        eprintln!(
            "demon: LoRA library: {} adapter(s) registered from {}",
            report.total,
            opts.lora_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(Some(library))
}

/// Start the runner thread.
pub fn start(mut core: LiveCore, mut opts: RunOptions) -> SessionResult<SessionHandle> {
    let library = open_library(&mut core, &opts)?;
    let source_prepare_max = opts.source_prepare_max;
    let (tx, rx) = sync_channel::<Command>(1024);
    let bus = Arc::new(EventBus::new(opts.bus_capacity));
    let state = Arc::new(Mutex::new(Some(core.state())));
    let probe = core.probe.clone();
    let health = Arc::new(Mutex::new(SessionHealth::default()));
    // A file that cannot be created is refused; one that cannot be written (a full disk) only
    // stops the recording, as a failed write later would.
    let writer = match &opts.session_file {
        Some(p) => {
            let mut w = SessionWriter::open(p)?;
            match w.header(core.config()) {
                Ok(()) => Some(w),
                Err(e) => {
                    let why = format!("the session file stopped recording: {e}");
                    eprintln!("demon: {why}; the session keeps playing");
                    health
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .recording_error = Some(why);
                    None
                }
            }
        }
        None => None,
    };
    let sample_rate = core.sample_rate();
    let (bus2, state2, health2) = (bus.clone(), state.clone(), health.clone());
    let join = std::thread::Builder::new()
        .name("demon-runner".into())
        .spawn(move || {
            let shared = Shared {
                bus: &bus2,
                state: &state2,
                health: &health2,
            };
            let result = run(&mut core, &mut opts, rx, writer, shared);
            if let Err(e) = &result {
                bus2.publish(Event::Notice {
                    message: format!("the session stopped: {e}"),
                });
            }
            bus2.close();
            result
        })
        .map_err(|e| SessionError::Backend(format!("cannot start the runner thread: {e}")))?;
    Ok(SessionHandle {
        tx,
        bus,
        state,
        probe,
        health,
        join: Arc::new(Mutex::new(Some(join))),
        sample_rate,
        source_prepare_max,
        library,
    })
}

/// What the runner shares with the handles.
struct Shared<'a> {
    bus: &'a EventBus,
    state: &'a Mutex<Option<SessionState>>,
    health: &'a Mutex<SessionHealth>,
}

impl Shared<'_> {
    fn health(&self, change: impl FnOnce(&mut SessionHealth)) {
        change(&mut self.health.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Say it on stderr and to every client.
    fn announce(&self, message: String) {
        eprintln!("demon: {message}");
        self.bus.publish(Event::Notice { message });
    }

    fn refresh_state(&self, core: &mut LiveCore) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(core.state());
    }
}

/// An applied control a failing tick may take back, with the message that restores what it
/// replaced.
struct Undo {
    tick: u64,
    applied: ControlMessage,
    restore: ControlMessage,
}

/// How many recent controls a failing tick may take back, and for how long after they were
/// applied (seconds of session time): older ones have proven harmless.
const UNDO_CONTROLS: usize = 32;
const UNDO_SECONDS: f64 = 10.0;

/// The message that restores what `msg` is about to change, from the state before it: knobs,
/// curves, LoRA strengths and the solver modes (the controls a tick can fail on). Prompts,
/// sources and transport are checked in full when applied and are not taken back.
fn restore_message(msg: &ControlMessage, before: &SessionState) -> Option<ControlMessage> {
    let target = |name: &str| before.targets.get(name).copied();
    Some(match msg {
        ControlMessage::SetKnob { name, .. } => ControlMessage::SetKnob {
            name: name.clone(),
            value: target(name)?,
        },
        ControlMessage::SetKnobs { values } => ControlMessage::SetKnobs {
            values: values
                .keys()
                .map(|k| target(k).map(|v| (k.clone(), v)))
                .collect::<Option<_>>()?,
        },
        ControlMessage::SetLora { id, .. } => ControlMessage::SetLora {
            id: id.clone(),
            strength: target(&format!("{}{id}", crate::controls::LORA_PREFIX)).unwrap_or(0.0),
        },
        ControlMessage::SetCurve { name, .. } => ControlMessage::SetCurve {
            name: name.clone(),
            curve: before.curves.get(name).cloned(),
        },
        ControlMessage::SetAutomation { knob, .. } => ControlMessage::SetAutomation {
            knob: knob.clone(),
            lane: before.automation.get(knob).cloned(),
        },
        ControlMessage::SetSolver { .. } => ControlMessage::SetSolver {
            solver: before.solver,
        },
        ControlMessage::SetCfgMode { .. } => ControlMessage::SetCfgMode {
            mode: before.cfg_mode,
        },
        ControlMessage::SetDcw { .. } => ControlMessage::SetDcw {
            enabled: Some(before.dcw_enabled),
            mode: Some(before.dcw_mode),
            wavelet: Some(before.dcw_wavelet),
        },
        _ => return None,
    })
}

/// A control as one short line for notices.
fn describe(m: &ControlMessage) -> String {
    let mut s = serde_json::to_string(&echo(m)).unwrap_or_else(|_| "a control".into());
    if s.len() > 160 {
        let cut = (0..=160)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// A failed write stops that recording, never the session: drop the writer, say why.
fn record_line(shared: &Shared<'_>, writer: &mut Option<SessionWriter>, line: &SessionLine) {
    if let Some(Err(e)) = writer.as_mut().map(|w| w.line(line)) {
        *writer = None;
        let why = format!("the session file stopped recording: {e}");
        shared.health(|h| h.recording_error = Some(why.clone()));
        shared.announce(format!("{why}; the session keeps playing"));
    }
}

/// Applies controls at one tick boundary: records each applied one, keeps what a failing tick
/// may take back, refreshes the state and echoes it, then answers.
struct Applier<'s, 'a> {
    shared: &'s Shared<'a>,
    writer: &'s mut Option<SessionWriter>,
    undo: &'s mut std::collections::VecDeque<Undo>,
    tick: u64,
    /// The id the next applied control gets (for the knob-to-ear accounting).
    next_control_id: &'s mut u64,
}

impl Applier<'_, '_> {
    /// Apply one control; its answer is returned and sent to `reply`.
    fn apply(
        &mut self,
        core: &mut LiveCore,
        origin: u64,
        message: ControlMessage,
        reply: Option<ReplySender<SessionResult<u64>>>,
        received: Instant,
    ) -> SessionResult<u64> {
        self.apply_with(core, origin, &message, reply, received, |core| {
            core.apply(&message)
        })
    }

    /// Apply `message` by `change` (which returns the control as recorded): a source prepared
    /// beside the ticks is applied this way, as the `set_source` it came from.
    fn apply_with(
        &mut self,
        core: &mut LiveCore,
        origin: u64,
        message: &ControlMessage,
        reply: Option<ReplySender<SessionResult<u64>>>,
        received: Instant,
        change: impl FnOnce(&mut LiveCore) -> SessionResult<ControlMessage>,
    ) -> SessionResult<u64> {
        let tick = self.tick;
        let restore = self
            .shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|st| restore_message(message, st));
        let result = change(core);
        if let Ok(recorded) = &result {
            core.track_control(*self.next_control_id, recorded, received);
            *self.next_control_id += 1;
            record_line(
                self.shared,
                self.writer,
                &SessionLine::Event {
                    tick,
                    message: recorded.clone(),
                },
            );
            if let Some(restore) = restore {
                self.undo.push_back(Undo {
                    tick,
                    applied: recorded.clone(),
                    restore,
                });
                if self.undo.len() > UNDO_CONTROLS {
                    self.undo.pop_front();
                }
            }
            // A reply means the change is visible: refresh the snapshot first.
            self.shared.refresh_state(core);
            self.shared.bus.publish(Event::Applied {
                tick,
                origin,
                message: echo(recorded),
            });
        }
        let answer = result.map(|_| tick);
        if let Some(r) = reply {
            r.send(answer.clone());
        }
        answer
    }
}

/// A knob value waiting for the end of the drain, with the answers owed to the values it
/// superseded.
struct StagedKnob {
    name: String,
    origin: u64,
    received: Instant,
    message: ControlMessage,
    reply: Option<ReplySender<SessionResult<u64>>>,
    superseded: Vec<ReplySender<SessionResult<u64>>>,
}

/// Knob sets coalescing at one tick boundary: one value per knob, the last valid one.
#[derive(Default)]
struct StagedKnobs(Vec<StagedKnob>);

impl StagedKnobs {
    fn stage(
        &mut self,
        name: String,
        origin: u64,
        message: ControlMessage,
        reply: Option<ReplySender<SessionResult<u64>>>,
        received: Instant,
    ) {
        let mut superseded = Vec::new();
        if let Some(i) = self.0.iter().position(|k| k.name == name) {
            let old = self.0.remove(i);
            superseded = old.superseded;
            superseded.extend(old.reply);
        }
        self.0.push(StagedKnob {
            name,
            origin,
            received,
            message,
            reply,
            superseded,
        });
    }

    /// Apply the winning values in the order they came. A superseded value was valid and
    /// replaced before any tick played it: it gets the answer of the value that replaced it.
    fn flush(&mut self, core: &mut LiveCore, applier: &mut Applier<'_, '_>) {
        for k in self.0.drain(..) {
            let answer = applier.apply(core, k.origin, k.message, k.reply, k.received);
            for r in k.superseded {
                r.send(answer.clone());
            }
        }
    }
}

fn run(
    core: &mut LiveCore,
    opts: &mut RunOptions,
    rx: Receiver<Command>,
    mut writer: Option<SessionWriter>,
    shared: Shared<'_>,
) -> SessionResult<SessionSummary> {
    let bus = shared.bus;
    let spt = core.config().samples_per_tick;
    let sr = core.sample_rate() as f64;
    let tick_period = Duration::from_secs_f64(spt as f64 / sr);
    let undo_ticks = (UNDO_SECONDS * sr / spt as f64).ceil() as u64;
    let origin_time = Instant::now();
    let mut recorder: Option<WavRecorder> = None;
    let mut played = 0u64;
    let mut script = std::mem::take(&mut opts.script).into_iter().peekable();
    let mut rejected_events = 0u64;
    let mut clock = std::mem::take(&mut opts.clock).into_iter().peekable();
    let mut stop = false;
    let mut last_error: Option<SessionError> = None;
    let mut undo: std::collections::VecDeque<Undo> = std::collections::VecDeque::new();
    let started_gen_time = Instant::now();
    core.set_degrade(opts.realtime && opts.degrade);
    let mut was_overloaded = false;
    let mut next_control_id = 1u64;

    let record =
        |writer: &mut Option<SessionWriter>, line: SessionLine| record_line(&shared, writer, &line);
    // The longest tick lately, for the controls' wait bound.
    let mut slowest_tick = Duration::ZERO;
    let mut staged = StagedKnobs::default();
    // A source change being prepared beside the ticks (live sessions, forkable codecs).
    let mut pending_source: Option<PendingSource> = None;
    // Library adapters loading beside the ticks, and the controls waiting for them.
    let adapter_files = core.adapter_files();
    let mut adapter_loads = AdapterLoads::default();
    // When the next tick is due (None: at once).
    let mut next_due: Option<Instant> = None;
    loop {
        let tick = core.tick_index();
        if opts.max_ticks.is_some_and(|m| tick >= m) || stop {
            break;
        }
        // 1. Controls, only here, between ticks. Knob sets wait in `staged` (coalescing per
        // knob) until the drain ends or another kind of command comes, then are applied in the
        // order their winning values came.
        let max_wait = CONTROL_MAX_WAIT.max(slowest_tick * 3);
        let mut applier = Applier {
            shared: &shared,
            writer: &mut writer,
            undo: &mut undo,
            tick,
            next_control_id: &mut next_control_id,
        };
        if let Some(outcome) = pending_source.as_ref().and_then(PendingSource::poll)
            && let Some(p) = pending_source.take()
        {
            match outcome {
                Ok(prepared) => {
                    let _answered = applier.apply_with(
                        core,
                        p.origin,
                        &p.message,
                        p.reply,
                        p.started,
                        |core| core.apply_prepared(prepared),
                    );
                }
                Err(e) => {
                    if let Some(r) = p.reply {
                        r.send(Err(e));
                    }
                }
            }
        }
        adapter_loads.poll(core, &mut applier);
        loop {
            let cmd = match rx.try_recv() {
                Ok(c) => c,
                Err(_) => {
                    // Nothing waiting: apply what is staged, then (while the next tick is not
                    // due) wait for more, so a control that comes between ticks is applied
                    // when it comes, not when the next tick starts.
                    staged.flush(core, &mut applier);
                    let Some(due) = next_due.filter(|d| *d > Instant::now()) else {
                        break;
                    };
                    match rx.recv_timeout(due - Instant::now()) {
                        Ok(c) => c,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                            break;
                        }
                    }
                }
            };
            if let Command::Control {
                origin,
                message,
                reply,
                queued,
            } = cmd
            {
                let waited = queued.elapsed();
                if waited > max_wait {
                    if let Some(r) = reply {
                        r.send(Err(SessionError::Timeout(format!(
                            "the control waited {} ms for a tick boundary, over the {} ms bound, and was not applied (the session is overloaded)",
                            waited.as_millis(),
                            max_wait.as_millis()
                        ))));
                    }
                    continue;
                }
                if let Some(files) = &adapter_files {
                    // A control naming a library adapter not loaded yet waits for its load
                    // (beside the ticks in a live session, here in an offline one).
                    if let Err(e) = check_preload(core, &message) {
                        if let Some(r) = reply {
                            r.send(Err(e));
                        }
                        continue;
                    }
                    let needs = core.adapters_to_load(&message);
                    if !needs.is_empty() || adapter_loads.holds_back(&message) {
                        staged.flush(core, &mut applier);
                        let control = ParkedControl {
                            origin,
                            message,
                            reply,
                            queued,
                        };
                        adapter_loads.park(core, files, control, &needs);
                        continue;
                    }
                    if let ControlMessage::InstallLora { .. } = &message {
                        // Preloading an adapter already in: nothing to do.
                        if let Some(r) = reply {
                            r.send(Ok(tick));
                        }
                        continue;
                    }
                }
                if let ControlMessage::SetKnob { name, .. } = &message {
                    // A value the knob refuses is answered now; a valid one replaces any
                    // value staged for the same knob, which is answered as superseded.
                    match core.check_knob(&message) {
                        Err(e) => {
                            if let Some(r) = reply {
                                r.send(Err(e));
                            }
                        }
                        Ok(()) => staged.stage(name.clone(), origin, message, reply, queued),
                    }
                    continue;
                }
                staged.flush(core, &mut applier);
                // A live session prepares a new source on a fork of the codec, so a long
                // source does not stop the ticks; a later source change overtakes it.
                let forked = match &message {
                    ControlMessage::SetSource { source } if source != &SourceSpec::None => {
                        opts.realtime.then(|| core.fork_codec()).flatten()
                    }
                    _ => None,
                };
                let Some(codec) = forked else {
                    // A preset with a source changes the source too: it overtakes one
                    // still being prepared.
                    if matches!(
                        message,
                        ControlMessage::SetSource { .. }
                            | ControlMessage::LoadPreset {
                                source: Some(_),
                                ..
                            }
                    ) && let Some(old) = pending_source.take()
                    {
                        old.supersede();
                    }
                    let _answered = applier.apply(core, origin, message, reply, queued);
                    continue;
                };
                if let Some(old) = pending_source.take() {
                    old.supersede();
                }
                pending_source = PendingSource::start(
                    origin,
                    message,
                    reply,
                    core.facts().clone(),
                    codec,
                    opts.source_prepare_max,
                );
                continue;
            }
            // Clients' playback reports change no control: they must not end a coalescing drain.
            if let Command::Heard { control, played } = cmd {
                let _ = core.heard(control, played);
                continue;
            }
            if let Command::Arrival {
                tick: slice_tick,
                client_sample,
            } = cmd
            {
                let _ = core.observe_arrival(slice_tick, client_sample);
                continue;
            }
            staged.flush(core, &mut applier);
            match cmd {
                Command::Control { .. } => {}
                Command::StartRecording { path, float, reply } => {
                    let r = WavRecorder::create(&path, core.sample_rate(), float).map(|mut rec| {
                        // The file says what played when the recording started.
                        let st = core.state();
                        rec.set_info(crate::render::wav_info(
                            &st.prompt,
                            st.used.as_ref().map(|u| &u.prompt),
                            core.controls().seed(),
                        ));
                        recorder = Some(rec)
                    });
                    reply.send(r);
                }
                Command::StopRecording { reply } => {
                    let r = match recorder.take() {
                        Some(mut rec) => rec
                            .finish()
                            .map(|_| Some((rec.path().to_path_buf(), rec.seconds()))),
                        None => Ok(None),
                    };
                    reply.send(r);
                }
                Command::LoopAudio { reply } => reply.send((tick, core.buffer().snapshot())),
                Command::Heard { .. } | Command::Arrival { .. } => {}
                Command::Preset { reply } => reply.send(core.preset()),
                Command::Rescan { scan, reply } => {
                    let report = core.merge_library(scan);
                    shared.refresh_state(core);
                    reply.send(report);
                }
                Command::Stop => {
                    stop = true;
                    break;
                }
            }
        }
        staged.flush(core, &mut applier);
        if stop {
            break;
        }
        while script.peek().is_some_and(|(t, _)| *t <= tick) {
            if let Some((_, message)) = script.next() {
                let installed = match &adapter_files {
                    Some(files) => install_now(core, files, &message, |core, m| {
                        core.track_control(next_control_id, &m, Instant::now());
                        next_control_id += 1;
                        record(
                            &mut writer,
                            SessionLine::Event {
                                tick,
                                message: m.clone(),
                            },
                        );
                        bus.publish(Event::Applied {
                            tick,
                            origin: 0,
                            message: m,
                        });
                    }),
                    None => Ok(()),
                };
                // A scripted preload of a library adapter is done by `install_now` itself.
                let preload = matches!(&message, ControlMessage::InstallLora { id, .. }
                    if core.library().get(id).is_some());
                let applied =
                    installed.and_then(|()| (!preload).then(|| core.apply(&message)).transpose());
                match applied {
                    Ok(None) => {}
                    Ok(Some(recorded)) => {
                        core.track_control(next_control_id, &recorded, Instant::now());
                        next_control_id += 1;
                        record(
                            &mut writer,
                            SessionLine::Event {
                                tick,
                                message: recorded.clone(),
                            },
                        );
                        bus.publish(Event::Applied {
                            tick,
                            origin: 0,
                            message: echo(&recorded),
                        });
                    }
                    Err(e) => {
                        rejected_events += 1;
                        shared.announce(format!("script event at tick {tick} rejected: {e}"));
                    }
                }
            }
        }
        // 2. The tick.
        let mut lead = None;
        while clock.peek().is_some_and(|(t, _, _, _)| *t < tick) {
            clock.next();
        }
        if let Some((_, _, l, cap)) = clock.next_if(|(t, _, _, _)| *t == tick) {
            lead = Some(l);
            if cap != core.depth_cap() {
                core.set_depth_cap(cap)?;
            }
        }
        let tick_started = Instant::now();
        let out = match core.tick(lead) {
            Ok(o) => {
                slowest_tick = tick_started.elapsed().max(slowest_tick.mul_f32(0.99));
                if let Some(e) = last_error.take() {
                    shared.health(|h| h.tick_error = None);
                    shared.announce(format!("ticks run again (the last failure was: {e})"));
                }
                while undo.front().is_some_and(|u| u.tick + undo_ticks < tick) {
                    undo.pop_front();
                }
                o
            }
            Err(e) => {
                // A failing tick leaves the ring untouched. Report it once (until the error
                // changes), then take back the newest recent control, one per failing tick,
                // until ticks run again; with nothing left to take back, retry once per tick
                // period so the controls that can fix it still arrive.
                if last_error.as_ref() != Some(&e) {
                    let what = format!("tick {tick} failed: {e}");
                    shared.health(|h| h.tick_error = Some(what.clone()));
                    shared.announce(what);
                    last_error = Some(e.clone());
                }
                if let Some(u) = undo.pop_back()
                    && let Ok(recorded) = core.apply(&u.restore)
                {
                    record(
                        &mut writer,
                        SessionLine::Event {
                            tick,
                            message: recorded.clone(),
                        },
                    );
                    shared.refresh_state(core);
                    bus.publish(Event::Applied {
                        tick,
                        origin: 0,
                        message: echo(&recorded),
                    });
                    shared.announce(format!(
                        "took back {} (applied at tick {}): ticks failed after it ({e})",
                        describe(&u.applied),
                        u.tick
                    ));
                    continue;
                }
                next_due = Some(Instant::now() + tick_period);
                continue;
            }
        };
        record(
            &mut writer,
            SessionLine::Clock {
                tick: out.tick,
                playhead: out.playhead,
                lead_frames: out.lead_frames,
                depth_cap: out.depth_cap,
            },
        );
        // Falling behind real time is said once when it starts and once when it ends; the
        // degrade policy's steps in between go to the log only.
        let rt = out.realtime;
        if rt.overloaded != was_overloaded {
            was_overloaded = rt.overloaded;
            shared.announce(if rt.overloaded {
                format!(
                    "falling behind real time: ticks take {:.0}% of their {:.0} ms budget{}",
                    rt.load * 100.0,
                    rt.budget_ms,
                    if opts.realtime && opts.degrade {
                        "; lowering the depth one step at a time until they fit"
                    } else {
                        ""
                    }
                )
            } else {
                format!(
                    "back in real time (ticks take {:.0}% of their budget)",
                    rt.load * 100.0
                )
            });
        }
        if rt.depth_cap != out.depth_cap {
            let depth = |c: Option<usize>| c.map_or("none".to_string(), |c| c.to_string());
            eprintln!(
                "demon: real time: depth cap {} -> {} (load {:.2})",
                depth(out.depth_cap),
                depth(rt.depth_cap),
                rt.load
            );
        }

        // 3. Outputs. Handing the block to the sinks is real-time work: no allocation (a
        // failing recorder is reported after the real-time section).
        if out.played_samples > 0 {
            let block = core.played();
            let sinks = &mut opts.sinks;
            let rec = &mut recorder;
            let (sunk, recorded) = crate::rt::no_alloc(|| {
                let sunk = sinks.iter_mut().try_for_each(|s| s.play(block));
                let recorded = rec.as_mut().map(|r| r.play(block));
                (sunk, recorded)
            });
            sunk?;
            if let Some(Err(e)) = recorded {
                recorder = None;
                let why = format!("the WAV recording stopped: {e}");
                shared.health(|h| h.recording_error = Some(why.clone()));
                shared.announce(format!("{why}; the session keeps playing"));
            }
            played += out.played_samples as u64;
        }
        let elapsed = started_gen_time.elapsed().as_secs_f32().max(1e-3);
        if out.replaced {
            bus.publish(Event::BufferReplaced {
                tick: out.tick,
                samples: core.buffer().len() as u64,
                version: core.generations(),
                audio: core.buffer().snapshot(),
            });
        }
        for (start, audio) in &out.patches {
            bus.publish(Event::Audio(AudioSlice {
                start_sample: *start,
                channels: audio.clone(),
                tick: out.tick,
                tick_ms: out.tick_ms,
                decode_ms: out.decode_ms,
                generations: core.generations(),
            }));
        }
        for r in &out.reflected {
            // One event per slice, with every control it is the first to carry.
            let controls = out
                .reflected
                .iter()
                .filter(|o| o.start_sample == r.start_sample && o.samples == r.samples)
                .map(|o| o.id)
                .collect::<Vec<_>>();
            if controls.first() == Some(&r.id) {
                bus.publish(Event::Reflects {
                    tick: out.tick,
                    start_sample: r.start_sample,
                    samples: r.samples,
                    controls,
                });
            }
        }
        bus.publish(Event::Stats {
            tick: out.tick,
            tick_ms: out.tick_ms,
            decode_ms: out.decode_ms,
            gen_per_s: core.generations() as f32 / elapsed,
            active_slots: out.active_slots,
            queue: out.queue,
            lead_ms: core.facts().frames_ms(out.lead_frames as usize) as f32,
            realtime: out.realtime,
            knob_to_ear: core.knob_to_ear(),
            loudness: core.loudness(),
            idle: core.is_idle(),
        });
        let st = core.state();
        if out.knobs_changed {
            bus.publish(Event::Params {
                tick: out.tick,
                effective: st.knobs.clone(),
                target: st.targets.clone(),
            });
        }
        *shared.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);

        // 4. Pacing, the clock-paced null sink: the next tick is due one tick period after
        // this one began (the wait is spent answering controls, step 1).
        next_due = opts
            .realtime
            .then(|| origin_time + tick_period * (out.tick as u32 + 1));
    }
    for s in opts.sinks.iter_mut() {
        s.finish()?;
    }
    if let Some(mut r) = recorder.take() {
        r.finish()?;
    }
    if let Some(w) = writer.take()
        && let Err(e) = w.finish(core.tick_index())
    {
        shared.health(|h| h.recording_error = Some(e.to_string()));
        return Err(e);
    }
    Ok(SessionSummary {
        ticks: core.tick_index(),
        generations: core.generations(),
        played_seconds: played as f64 / sr,
        rejected_events,
    })
}

/// What other clients see of an applied message: sources are announced by name, not by their
/// (large) latent.
fn echo(m: &ControlMessage) -> ControlMessage {
    match m {
        ControlMessage::SetSource { source } => ControlMessage::SetSource {
            source: echo_source(source),
        },
        ControlMessage::SetReference { role, source } => ControlMessage::SetReference {
            role: *role,
            source: echo_source(source),
        },
        ControlMessage::LoadPreset {
            preset,
            source,
            references,
        } => ControlMessage::LoadPreset {
            preset: preset.clone(),
            source: source.as_ref().map(echo_source),
            references: references
                .iter()
                .map(|(role, s)| (*role, echo_source(s)))
                .collect(),
        },
        other => other.clone(),
    }
}

/// A source as [`echo`] shows it: a latent or audio without its data.
fn echo_source(source: &SourceSpec) -> SourceSpec {
    match source {
        SourceSpec::Latent {
            name,
            frames,
            channels,
            ..
        } => SourceSpec::Latent {
            name: name.clone(),
            frames: *frames,
            channels: *channels,
            data_b64: String::new(),
        },
        SourceSpec::Audio { name, .. } => SourceSpec::Audio {
            name: name.clone(),
            channels: Vec::new(),
        },
        other => other.clone(),
    }
}
