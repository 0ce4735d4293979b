//! The WebSocket protocol (docs/protocol.md): JSON requests with replies and errors, binary
//! audio frames as f16 deltas against a per-client mirror, echoes of every client's changes.
//!
//! Audio frames are made once for all clients: one [`AudioFanout`] task turns the session's
//! audio into frames against one shared mirror ([`FrameLog`]) and broadcasts the same bytes to
//! every connection, so a client costs no copy of the loop, joining or resyncing.
//!
//! Each connection is three async tasks and no thread: a reader (this task) that answers
//! requests through the service, a writer that owns the socket's sending half, and a forwarder
//! that passes on the shared frames and turns the session's other events (`Subscriber::recv`)
//! into messages. What waits for a slow client is bounded: at most one full frame, and deltas
//! and messages up to `max_client_queue_bytes`; a client that falls further behind skips
//! deltas and catches up with a full frame once the one it has is written.
//! Nothing a client sends can stop the session or another client: bad input gets an `error`
//! reply and the connection carries on.
//!
//! The upgrade is our own (RFC 6455 §4.2), onto tokio-tungstenite, so that a full frame can go
//! out as WebSocket fragments of [`FULL_FRAGMENT_BYTES`]: the WebSocket library copies each
//! frame it sends into a per-connection buffer that never shrinks, so one unfragmented full
//! frame (11.5 MB for a minute of loop) would stay held by every connection for its lifetime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, body::Bytes};
use demon_live::bus::{Event, Subscriber};
use demon_live::control::ReferenceRole;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::frames::{CatchUp, FrameLog, FrameMeta};
use crate::protocol::{
    ApiError, ClientMessage, Compression, ErrorCode, RecordAction, ReplyResult, Request,
    ServerMessage, parse_client_message,
};
use crate::service::{Origin, RateLimit, Service};

/// Messages queued for one client's socket. Deltas are skipped (not queued) when fewer than
/// `AUDIO_HEADROOM` places are left, so replies and control echoes always find room.
const OUTBOX: usize = 512;
const AUDIO_HEADROOM: usize = 8;
/// `stats` go out at most this often (but see [`StatsGate`]).
const STATS_EVERY: Duration = Duration::from_millis(250);
/// Which `stats` go to one client: one per [`STATS_EVERY`], and at once any whose overload state
/// (the overload flag or the depth cap) differs from the last sent, so the page's indicator
/// follows the session within a tick.
#[derive(Default)]
struct StatsGate {
    last_sent: Option<Instant>,
    overload: Option<(bool, Option<usize>)>,
}

impl StatsGate {
    fn admit(&mut self, realtime: &demon_live::budget::RealtimeReport, now: Instant) -> bool {
        let overload = Some((realtime.overloaded, realtime.depth_cap));
        let due = self
            .last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= STATS_EVERY);
        if !due && overload == self.overload {
            return false;
        }
        self.last_sent = Some(now);
        self.overload = overload;
        true
    }
}

/// Shared frames a connection may lag behind before it must catch up with a full frame
/// (about 10 s of ticks).
const FANOUT_FRAMES: usize = 256;
/// Deltas kept after a cached full frame, so clients joining within about 2 s of each other
/// share one encoding of the loop.
const CATCH_UP_DELTAS: usize = 50;
/// How often a client that must catch up checks whether its queued full frame has gone.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

/// A frame made once for every client.
#[derive(Clone)]
enum Shared {
    Delta {
        seq: u64,
        frame: Bytes,
        /// The same frame zstd-compressed, made by the first client that asks for it.
        zstd: Arc<OnceLock<Bytes>>,
    },
    /// The loop was replaced: every client needs the full frame `seq` (or a later one).
    Full { seq: u64 },
    /// A frame could not be made (a field past the header's range); the mirror is unchanged.
    Refused(crate::protocol::FrameError),
}

/// Whether the shared log exists yet, or why it never will.
#[derive(Clone)]
enum FanoutState {
    Starting,
    Running,
    Failed(ApiError),
}

/// The shared mirror and its broadcast: one per server, started by [`AudioFanout::start`].
pub struct AudioFanout {
    log: Mutex<Option<FrameLog>>,
    frames: broadcast::Sender<Shared>,
    state: watch::Sender<FanoutState>,
}

impl AudioFanout {
    /// Subscribe to the session and keep the shared mirror until the session ends.
    pub fn start(svc: Arc<Service>) -> Arc<Self> {
        let fanout = Arc::new(Self {
            log: Mutex::new(None),
            frames: broadcast::channel(FANOUT_FRAMES).0,
            state: watch::channel(FanoutState::Starting).0,
        });
        tokio::spawn(fanout.clone().run(svc));
        fanout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<FrameLog>> {
        // A panic while holding the lock cannot leave the log half-written in a way that
        // matters more than losing it: carry on with what is there.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>, svc: Arc<Service>) {
        // Subscribe before taking the loop so no slice falls in between.
        let sub = svc.subscribe();
        let log = match svc.loop_snapshot().await {
            Ok((tick, snapshot)) => FrameLog::new(&snapshot, tick, CATCH_UP_DELTAS)
                .map_err(|e| ApiError::new(ErrorCode::TooLarge, e.to_string())),
            Err(e) => Err(e),
        };
        match log {
            Ok(log) => {
                *self.lock() = Some(log);
                self.state.send_replace(FanoutState::Running);
            }
            Err(e) => {
                self.state.send_replace(FanoutState::Failed(e));
                return;
            }
        }
        while let Ok(event) = sub.recv().await {
            let mut guard = self.lock();
            let Some(log) = guard.as_mut() else { return };
            // Sent under the lock: a catch-up taken at `seq` is followed by exactly the frames
            // after `seq`.
            let shared = match event {
                Event::Audio(slice) => {
                    let meta = FrameMeta {
                        tick: slice.tick,
                        tick_ms: slice.tick_ms,
                        decode_ms: slice.decode_ms,
                        generations: slice.generations,
                    };
                    match log.delta(slice.start_sample, &slice.channels, meta) {
                        Ok((seq, frame)) => Shared::Delta {
                            seq,
                            frame,
                            zstd: Arc::default(),
                        },
                        Err(e) => Shared::Refused(e),
                    }
                }
                Event::BufferReplaced { tick, audio, .. } => match log.replace(&audio, tick) {
                    Ok(seq) => Shared::Full { seq },
                    Err(e) => Shared::Refused(e),
                },
                _ => continue,
            };
            let _ = self.frames.send(shared);
        }
        self.state.send_replace(FanoutState::Failed(
            demon_live::SessionError::Stopped(None).into(),
        ));
    }

    /// Frames from now on (subscribe before [`Self::catch_up`]).
    fn subscribe(&self) -> broadcast::Receiver<Shared> {
        self.frames.subscribe()
    }

    /// The full frame and deltas that bring a client to the shared mirror, once it exists.
    async fn catch_up(&self) -> Result<CatchUp, ApiError> {
        let mut state = self.state.subscribe();
        loop {
            if let Some(log) = self.lock().as_mut() {
                return log
                    .catch_up()
                    .map_err(|e| ApiError::new(ErrorCode::TooLarge, e.to_string()));
            }
            if let FanoutState::Failed(e) = &*state.borrow_and_update() {
                return Err(e.clone());
            }
            if state.changed().await.is_err() {
                return Err(demon_live::SessionError::Stopped(None).into());
            }
        }
    }
}

/// A message and what it holds up in a client's queue.
struct Queued {
    msg: Message,
    bytes: usize,
    full: bool,
}

/// The sending side of one client's queue, with its byte and full-frame counts (the writer
/// takes them off once a message is on the socket).
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<AtomicUsize>,
    fulls: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Outbox {
    /// Queue a message (waits for a place); false once the connection is gone.
    async fn send(&self, msg: Message) -> bool {
        let bytes = match &msg {
            Message::Binary(b) => b.len(),
            Message::Text(t) => t.len(),
            _ => 0,
        };
        self.queue(Queued {
            msg,
            bytes,
            full: false,
        })
        .await
    }

    async fn send_full(&self, frame: Bytes) -> bool {
        self.queue(Queued {
            msg: Message::Binary(frame),
            bytes: 0,
            full: true,
        })
        .await
    }

    async fn queue(&self, q: Queued) -> bool {
        self.bytes.fetch_add(q.bytes, Ordering::Relaxed);
        self.fulls.fetch_add(q.full as usize, Ordering::Relaxed);
        let (bytes, full) = (q.bytes, q.full);
        if self.tx.send(q).await.is_err() {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.fulls.fetch_sub(full as usize, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether a delta of `bytes` may be queued now.
    fn room_for(&self, bytes: usize) -> bool {
        self.tx.capacity() >= AUDIO_HEADROOM
            && self.bytes.load(Ordering::Relaxed) + bytes <= self.max_bytes
    }

    fn full_queued(&self) -> bool {
        self.fulls.load(Ordering::Relaxed) > 0
    }

    /// The full frame and deltas of a catch-up (the deltas compressed as the client asked);
    /// false once the connection is gone.
    async fn send_catch_up(&self, c: CatchUp, compression: Compression) -> bool {
        if !self.send_full(c.full).await {
            return false;
        }
        for d in c.deltas {
            let d = match compression {
                Compression::Zstd => crate::frames::zstd_delta(&d),
                Compression::None => d,
            };
            if !self.send(Message::Binary(d)).await {
                return false;
            }
        }
        true
    }
}

/// The largest WebSocket frame a full audio frame is sent in (the rest follow as
/// continuation frames of the same message; clients see one binary message).
pub const FULL_FRAGMENT_BYTES: usize = 256 << 10;

/// The socket of one client.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why an upgrade request is refused (400, with the reason).
fn bad_upgrade(problem: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("not a WebSocket upgrade: {problem}"),
    )
        .into_response()
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// `Sec-WebSocket-Key` when it is what RFC 6455 asks: base64 of 16 bytes (24 characters,
/// the last two `=`).
fn websocket_key(headers: &HeaderMap) -> Option<&[u8]> {
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?.as_bytes();
    let base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    (key.len() == 24 && key[..22].iter().all(base64) && &key[22..] == b"==").then_some(key)
}

pub async fn handler(
    State(svc): State<Arc<Service>>,
    Extension(fanout): Extension<Arc<AudioFanout>>,
    mut req: axum::extract::Request,
) -> Response {
    let headers = req.headers();
    if req.method() != axum::http::Method::GET || req.version() != axum::http::Version::HTTP_11 {
        return bad_upgrade("an upgrade is an HTTP/1.1 GET");
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return bad_upgrade("`Connection: upgrade` and `Upgrade: websocket` are needed");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "not a WebSocket upgrade: only version 13 is spoken",
        )
            .into_response();
    }
    let Some(key) = websocket_key(headers) else {
        return bad_upgrade("`Sec-WebSocket-Key` must be base64 of 16 bytes");
    };
    let compression = match Compression::from_query(req.uri().query()) {
        Ok(c) => c,
        Err(problem) => return (StatusCode::BAD_REQUEST, problem).into_response(),
    };
    let accept = derive_accept_key(key);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limits = svc.limits();
    let max = limits.max_binary_bytes.max(limits.max_text_bytes);
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    tokio::spawn(async move {
        // The client went away before the upgrade completed: nothing to serve.
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        connection(svc, fanout, socket, compression).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Send a full audio frame as one binary message in fragments of [`FULL_FRAGMENT_BYTES`].
async fn send_fragmented<S>(sink: &mut S, frame: Bytes) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    let len = frame.len();
    let mut offset = 0;
    loop {
        let end = (offset + FULL_FRAGMENT_BYTES).min(len);
        let opcode = if offset == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let part = Frame::message(frame.slice(offset..end), opcode, end == len);
        if sink.feed(Message::Frame(part)).await.is_err() {
            return false;
        }
        if end == len {
            break;
        }
        offset = end;
    }
    sink.flush().await.is_ok()
}

fn text(m: &ServerMessage) -> Message {
    Message::Text(m.to_json().into())
}

async fn connection(
    svc: Arc<Service>,
    fanout: Arc<AudioFanout>,
    socket: Socket,
    compression: Compression,
) {
    let client_id = svc.new_client();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Queued>(OUTBOX);
    let out = Outbox {
        tx,
        bytes: Arc::new(AtomicUsize::new(0)),
        fulls: Arc::new(AtomicUsize::new(0)),
        max_bytes: svc.limits().max_client_queue_bytes,
    };
    let (bytes, fulls) = (out.bytes.clone(), out.fulls.clone());
    let writer = tokio::spawn(async move {
        while let Some(q) = rx.recv().await {
            let closing = matches!(q.msg, Message::Close(_));
            let sent = match q.msg {
                Message::Binary(frame) if q.full => send_fragmented(&mut sink, frame).await,
                msg => sink.send(msg).await.is_ok(),
            };
            bytes.fetch_sub(q.bytes, Ordering::Relaxed);
            fulls.fetch_sub(q.full as usize, Ordering::Relaxed);
            if !sent || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    // Subscribe before catching up so no frame falls in between.
    let sub = svc.subscribe();
    let frames = fanout.subscribe();
    let start = match fanout.catch_up().await {
        Ok(c) => svc.ready(client_id, c.samples).map(|ready| (ready, c)),
        Err(e) => Err(e),
    };
    let (mut ready, catch_up) = match start {
        Ok(x) => x,
        Err(e) => {
            let _ = out.send(text(&ServerMessage::error(Value::Null, e))).await;
            drop(out);
            let _ = writer.await;
            return;
        }
    };
    let synced = catch_up.seq;
    ready.compression = compression;
    if !out.send(text(&ServerMessage::Ready(Box::new(ready)))).await
        || !out.send_catch_up(catch_up, compression).await
    {
        return;
    }

    // A resync asked while one is pending is the same resync.
    let (resync_tx, resync_rx) = mpsc::channel::<()>(1);
    let forwarder = tokio::spawn(forward(
        fanout,
        sub,
        frames,
        synced,
        out.clone(),
        resync_rx,
        compression,
    ));

    let mut resync_rate = ResyncLimit::new(svc.limits().min_resync_interval);
    let mut rate = RateLimit::new(svc.limits().max_controls_per_second);
    let mut pending_upload: Option<(Value, String, Option<ReferenceRole>)> = None;
    // Controls waiting for their tick: the next request is read meanwhile (a client sending
    // 50 controls a second must not queue behind one tick each).
    let mut waiting = tokio::task::JoinSet::new();
    while let Some(msg) = stream.next().await {
        while waiting.try_join_next().is_some() {}
        let Ok(msg) = msg else { break };
        let reply = match msg {
            Message::Text(t) => match svc.check_text_size(t.len(), "text frames") {
                Err(e) => Some(ServerMessage::error(Value::Null, e)),
                Ok(()) => match parse_client_message(&t) {
                    Err((id, e)) => Some(ServerMessage::error(id, e)),
                    Ok(m) => {
                        answer(
                            &svc,
                            client_id,
                            m,
                            &mut rate,
                            &mut pending_upload,
                            (&resync_tx, &mut resync_rate),
                            (&mut waiting, &out),
                        )
                        .await
                    }
                },
            },
            Message::Binary(bytes) => Some(match pending_upload.take() {
                Some((id, name, role)) => {
                    match svc
                        .upload(Origin::Client(client_id), name, role, bytes.to_vec())
                        .await
                    {
                        Ok(ack) => ServerMessage::reply(id, ReplyResult::Applied(ack)),
                        Err(e) => ServerMessage::error(id, e),
                    }
                }
                None => ServerMessage::error(
                    Value::Null,
                    ApiError::new(
                        ErrorCode::BadMessage,
                        "a binary frame is only expected after an `upload` request",
                    ),
                ),
            }),
            Message::Close(_) => break,
            _ => None,
        };
        if let Some(m) = reply
            && !out.send(text(&m)).await
        {
            break;
        }
    }
    forwarder.abort();
    waiting.abort_all();
    drop(out);
    let _ = writer.await;
}

/// At most one resync per `min_interval` per connection (a resync costs the client, and the
/// server's socket, a whole loop).
struct ResyncLimit {
    min_interval: Duration,
    last: Option<Instant>,
}

impl ResyncLimit {
    fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last: None,
        }
    }

    fn check(&mut self) -> Result<(), ApiError> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.min_interval)
        {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "at most one resync per {} ms",
                    self.min_interval.as_millis()
                ),
            ));
        }
        self.last = Some(now);
        Ok(())
    }
}

/// The answer to one request (`None`: answered later or not at all, as the protocol says). A
/// queued control is answered later, by a task in `waiting` that sends to `replies`.
async fn answer(
    svc: &Arc<Service>,
    client_id: u64,
    m: ClientMessage,
    rate: &mut RateLimit,
    pending_upload: &mut Option<(Value, String, Option<ReferenceRole>)>,
    (resync, resync_rate): (&mpsc::Sender<()>, &mut ResyncLimit),
    (waiting, replies): (&mut tokio::task::JoinSet<()>, &Outbox),
) -> Option<ServerMessage> {
    let id = m.id;
    let result = match m.request {
        Request::Ping => return Some(ServerMessage::Pong { id }),
        Request::GetState => {
            return Some(match svc.state() {
                Ok(state) => ServerMessage::State {
                    id,
                    state: Box::new(state),
                },
                Err(e) => ServerMessage::error(id, e),
            });
        }
        Request::GetPreset => {
            return Some(match svc.preset().await {
                Ok(preset) => ServerMessage::Preset {
                    id,
                    preset: Box::new(preset),
                },
                Err(e) => ServerMessage::error(id, e),
            });
        }
        Request::Resync => {
            if let Err(e) = resync_rate.check() {
                return Some(ServerMessage::error(id, e));
            }
            let _ = resync.try_send(());
            return None;
        }
        Request::RescanLoras => svc.rescan_loras().await.map(ReplyResult::LoraRescan),
        Request::Upload { name, role } => {
            *pending_upload = Some((id, name.unwrap_or_else(|| "upload".into()), role));
            return None;
        }
        Request::Control { message } => match rate.check() {
            Err(e) => Err(e),
            Ok(()) if Service::needs_resolving(&message) => svc
                .apply(Origin::Client(client_id), message)
                .await
                .map(ReplyResult::Applied),
            Ok(()) => match svc.queue(Origin::Client(client_id), message) {
                Err(e) => Err(e),
                Ok(ack) => {
                    let replies = replies.clone();
                    waiting.spawn(async move {
                        let m = match ack.await {
                            Ok(ack) => ServerMessage::reply(id, ReplyResult::Applied(ack)),
                            Err(e) => ServerMessage::error(id, e),
                        };
                        replies.send(text(&m)).await;
                    });
                    return None;
                }
            },
        },
        Request::Record {
            action: RecordAction::Start,
        } => svc
            .start_recording()
            .await
            .map(ReplyResult::RecordingStarted),
        Request::Record {
            action: RecordAction::Stop,
        } => svc
            .stop_recording()
            .await
            .map(ReplyResult::RecordingStopped),
        Request::MidiLearn {
            knob,
            mode,
            pickup,
            action,
        } => svc
            .midi_learn(knob.as_deref(), mode, pickup, action)
            .await
            .map(ReplyResult::MidiLearn),
        Request::Heard { control, ago_ms } => {
            return svc
                .heard(control, ago_ms)
                .err()
                .map(|e| ServerMessage::error(id, e));
        }
        Request::Arrival { tick, sample } => {
            return svc
                .arrival(tick, sample)
                .err()
                .map(|e| ServerMessage::error(id, e));
        }
    };
    Some(match result {
        Ok(r) => ServerMessage::reply(id, r),
        Err(e) => ServerMessage::error(id, e),
    })
}

/// What the forwarder acts on next.
enum Next {
    Resync,
    Frame(Shared),
    /// This connection fell more than `FANOUT_FRAMES` shared frames behind.
    Lagged,
    /// Time to look again whether a pending catch-up can go out.
    Poll,
    Event(Event),
    /// The bus closed this subscriber: the session ended, or this client fell so far behind
    /// that its queue filled with control events.
    Disconnected,
}

/// Shared frames and session events → one client, until the client or the session goes.
/// `synced`: the client holds the shared mirror as of that frame (`None`: it must catch up).
async fn forward(
    fanout: Arc<AudioFanout>,
    sub: Subscriber,
    mut frames: broadcast::Receiver<Shared>,
    synced: u64,
    out: Outbox,
    mut resync: mpsc::Receiver<()>,
    compression: Compression,
) {
    let mut synced = Some(synced);
    let mut stats_gate = StatsGate::default();
    loop {
        let next = tokio::select! {
            biased;
            r = resync.recv() => match r {
                Some(()) => Next::Resync,
                None => return,
            },
            f = frames.recv() => match f {
                Ok(f) => Next::Frame(f),
                Err(broadcast::error::RecvError::Lagged(_)) => Next::Lagged,
                Err(broadcast::error::RecvError::Closed) => Next::Disconnected,
            },
            e = sub.recv() => match e {
                Ok(e) => Next::Event(e),
                Err(_) => Next::Disconnected,
            },
            () = tokio::time::sleep(CATCH_UP_POLL), if synced.is_none() => Next::Poll,
        };
        let msg = match next {
            Next::Disconnected => {
                let _ = out
                    .send(text(&ServerMessage::Notice {
                        message: "the session's event stream ended for this connection (the session stopped, or the connection fell too far behind); reconnect".into(),
                    }))
                    .await;
                let _ = out
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Error,
                        reason: "event stream ended".into(),
                    })))
                    .await;
                return;
            }
            // A full frame still queued already brings the client to the mirror (the deltas
            // after it follow): the resync is that one, not another.
            Next::Resync if out.full_queued() && synced.is_some() => None,
            Next::Resync | Next::Lagged => {
                synced = None;
                None
            }
            Next::Poll => None,
            Next::Frame(Shared::Delta { seq, frame, zstd }) => match synced {
                Some(s) if seq > s => {
                    let frame = match compression {
                        Compression::Zstd => zstd
                            .get_or_init(|| crate::frames::zstd_delta(&frame))
                            .clone(),
                        Compression::None => frame,
                    };
                    if out.room_for(frame.len()) {
                        synced = Some(seq);
                        Some(Message::Binary(frame))
                    } else {
                        // Too far behind to queue more: skip, and catch up later.
                        synced = None;
                        None
                    }
                }
                // Already in the catch-up it got, or waiting for one.
                _ => None,
            },
            Next::Frame(Shared::Full { seq }) => {
                if synced.is_some_and(|s| seq > s) {
                    synced = None;
                }
                None
            }
            Next::Frame(Shared::Refused(e)) => Some(frame_error(e)),
            Next::Event(Event::Audio(_) | Event::BufferReplaced { .. }) => None,
            Next::Event(e @ Event::Stats { realtime, .. }) => stats_gate
                .admit(&realtime, Instant::now())
                .then(|| ServerMessage::from_event(&e).map(|m| text(&m)))
                .flatten(),
            Next::Event(e) => ServerMessage::from_event(&e).map(|m| text(&m)),
        };
        if let Some(msg) = msg
            && !out.send(msg).await
        {
            return;
        }
        // Catch up once the full frame this client has (if any) is on its way.
        if synced.is_none() && !out.full_queued() {
            let c = match fanout.catch_up().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = out.send(text(&ServerMessage::error(Value::Null, e))).await;
                    return;
                }
            };
            synced = Some(c.seq);
            if !out.send_catch_up(c, compression).await {
                return;
            }
        }
    }
}

fn frame_error(e: crate::protocol::FrameError) -> Message {
    text(&ServerMessage::error(
        Value::Null,
        ApiError::new(ErrorCode::TooLarge, e.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use demon_live::budget::RealtimeReport;

    #[test]
    fn stats_are_throttled_except_a_change_of_overload_state() {
        let calm = RealtimeReport {
            budget_ms: 40.0,
            load: 0.5,
            overloaded: false,
            depth_cap: None,
        };
        let capped = RealtimeReport {
            load: 0.8,
            depth_cap: Some(3),
            ..calm
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut gate = StatsGate::default();
        assert!(gate.admit(&calm, at(0)), "the first stats go out");
        assert!(!gate.admit(&calm, at(40)), "the next tick's are held");
        assert!(gate.admit(&capped, at(80)), "a depth cap goes out at once");
        assert!(
            !gate.admit(&capped, at(120)),
            "and then the throttle holds again"
        );
        let over = RealtimeReport {
            overloaded: true,
            ..capped
        };
        assert!(gate.admit(&over, at(160)), "an overload goes out at once");
        assert!(gate.admit(&calm, at(200)), "so does its end");
        assert!(!gate.admit(&calm, at(440)), "249 ms later: held");
        assert!(gate.admit(&calm, at(450)), "250 ms later: due");
    }
}
