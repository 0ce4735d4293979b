//! The WebSocket protocol (docs/protocol.md): JSON requests with replies and errors, binary
//! audio frames as f16 deltas against a per-client mirror, echoes of every client's changes.
//!
//! Each connection is three async tasks and no thread: a reader (this task) that answers
//! requests through the service, a writer that owns the socket's sending half, and a forwarder
//! that awaits session events on the bus (`Subscriber::recv`) and turns them into frames.
//! Nothing a client sends can stop the session or another client: bad input gets an `error`
//! reply and the connection carries on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use demon_live::bus::{Event, Subscriber};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::frames::{FrameMeta, Mirror};
use crate::protocol::{
    ApiError, ClientMessage, ErrorCode, RecordAction, ReplyResult, Request, ServerMessage,
    parse_client_message,
};
use crate::service::{Origin, RateLimit, Service};

/// Frames queued for one client's socket. Audio slices are skipped (not queued) when fewer
/// than `AUDIO_HEADROOM` places are left, so replies and control echoes always find room.
const OUTBOX: usize = 512;
const AUDIO_HEADROOM: usize = 8;
/// `stats` go out at most this often.
const STATS_EVERY: Duration = Duration::from_millis(250);

pub async fn handler(ws: WebSocketUpgrade, State(svc): State<Arc<Service>>) -> Response {
    let limits = svc.limits();
    let max = limits.max_binary_bytes.max(limits.max_text_bytes);
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| connection(svc, socket))
}

fn text(m: &ServerMessage) -> Message {
    Message::Text(m.to_json().into())
}

async fn connection(svc: Arc<Service>, socket: WebSocket) {
    let client_id = svc.new_client();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    // Subscribe before taking the loop so no slice falls in between.
    let sub = svc.subscribe();
    let start = match svc.loop_snapshot().await {
        Ok((tick, snapshot)) => svc.ready(client_id, &snapshot).and_then(|ready| {
            let meta = FrameMeta {
                tick,
                ..Default::default()
            };
            let (mirror, full) = Mirror::full_frame(&snapshot, meta)
                .map_err(|e| ApiError::new(ErrorCode::TooLarge, e.to_string()))?;
            Ok((ready, mirror, full))
        }),
        Err(e) => Err(e),
    };
    let (ready, mirror, full) = match start {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.send(text(&ServerMessage::error(Value::Null, e))).await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    if tx
        .send(text(&ServerMessage::Ready(Box::new(ready))))
        .await
        .is_err()
        || tx.send(Message::Binary(full.into())).await.is_err()
    {
        return;
    }

    // A resync asked while one is pending is the same resync.
    let (resync_tx, resync_rx) = mpsc::channel::<()>(1);
    let forwarder = tokio::spawn(forward(svc.clone(), sub, mirror, tx.clone(), resync_rx));

    let mut rate = RateLimit::new(svc.limits().max_controls_per_second);
    let mut pending_upload: Option<(Value, String)> = None;
    while let Some(msg) = stream.next().await {
        let Ok(msg) = msg else { break };
        let out = match msg {
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
                            &resync_tx,
                        )
                        .await
                    }
                },
            },
            Message::Binary(bytes) => Some(match pending_upload.take() {
                Some((id, name)) => {
                    match svc
                        .upload(Origin::Client(client_id), name, bytes.to_vec())
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
        if let Some(m) = out
            && tx.send(text(&m)).await.is_err()
        {
            break;
        }
    }
    forwarder.abort();
    drop(tx);
    let _ = writer.await;
}

/// The answer to one request (`None`: answered later or not at all, as the protocol says).
async fn answer(
    svc: &Arc<Service>,
    client_id: u64,
    m: ClientMessage,
    rate: &mut RateLimit,
    pending_upload: &mut Option<(Value, String)>,
    resync: &mpsc::Sender<()>,
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
        Request::Resync => {
            let _ = resync.try_send(());
            return None;
        }
        Request::Upload { name } => {
            *pending_upload = Some((id, name.unwrap_or_else(|| "upload".into())));
            return None;
        }
        Request::Control { message } => match rate.check() {
            Ok(()) => svc
                .apply(Origin::Client(client_id), message)
                .await
                .map(ReplyResult::Applied),
            Err(e) => Err(e),
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
        Request::MidiLearn { knob } => svc.midi_learn(&knob).map(ReplyResult::MidiLearn),
    };
    Some(match result {
        Ok(r) => ServerMessage::reply(id, r),
        Err(e) => ServerMessage::error(id, e),
    })
}

/// What the forwarder acts on next.
enum Next {
    Resync,
    Event(Event),
    /// The bus closed this subscriber: the session ended, or this client fell so far behind
    /// that its queue filled with control events.
    Disconnected,
}

/// Session events → frames for one client, until the client or the session goes.
async fn forward(
    svc: Arc<Service>,
    sub: Subscriber,
    mut mirror: Mirror,
    out: mpsc::Sender<Message>,
    mut resync: mpsc::Receiver<()>,
) {
    let mut last_stats: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            biased;
            r = resync.recv() => match r {
                Some(()) => Next::Resync,
                None => return,
            },
            e = sub.recv() => match e {
                Ok(e) => Next::Event(e),
                Err(_) => Next::Disconnected,
            },
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
                        code: 1011,
                        reason: "event stream ended".into(),
                    })))
                    .await;
                return;
            }
            Next::Resync => match svc.loop_snapshot().await {
                Ok((tick, snapshot)) => full_frame(&mut mirror, &snapshot, tick),
                Err(e) => text(&ServerMessage::error(Value::Null, e)),
            },
            Next::Event(Event::BufferReplaced { tick, audio, .. }) => {
                full_frame(&mut mirror, &audio, tick)
            }
            Next::Event(Event::Audio(slice)) => {
                // Only touch the mirror for a frame that will be sent: a slow client skips
                // slices and catches up with the next delta.
                if out.capacity() < AUDIO_HEADROOM {
                    continue;
                }
                let meta = FrameMeta {
                    tick: slice.tick,
                    tick_ms: slice.tick_ms,
                    decode_ms: slice.decode_ms,
                    generations: slice.generations,
                };
                match mirror.delta_frame(slice.start_sample, &slice.channels, meta) {
                    Ok(frame) => Message::Binary(frame.into()),
                    Err(e) => frame_error(e),
                }
            }
            Next::Event(e @ Event::Stats { .. }) => {
                if last_stats.is_some_and(|t| t.elapsed() < STATS_EVERY) {
                    continue;
                }
                last_stats = Some(Instant::now());
                match ServerMessage::from_event(&e) {
                    Some(m) => text(&m),
                    None => continue,
                }
            }
            Next::Event(e) => match ServerMessage::from_event(&e) {
                Some(m) => text(&m),
                None => continue,
            },
        };
        if out.send(msg).await.is_err() {
            return;
        }
    }
}

/// A full-buffer frame of `snapshot`; the client's mirror restarts from it.
fn full_frame(
    mirror: &mut Mirror,
    snapshot: &demon_live::loopbuf::LoopSnapshot,
    tick: u64,
) -> Message {
    let meta = FrameMeta {
        tick,
        ..Default::default()
    };
    match Mirror::full_frame(snapshot, meta) {
        Ok((m, frame)) => {
            *mirror = m;
            Message::Binary(frame.into())
        }
        Err(e) => frame_error(e),
    }
}

fn frame_error(e: crate::protocol::FrameError) -> Message {
    text(&ServerMessage::error(
        Value::Null,
        ApiError::new(ErrorCode::TooLarge, e.to_string()),
    ))
}
