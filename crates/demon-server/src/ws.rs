//! The WebSocket protocol (docs/protocol.md): JSON requests with replies and errors, binary
//! audio frames as f16 deltas against a per-client mirror, echoes of other clients' changes.
//!
//! Each connection has three parts: a reader (this task) that answers requests, a writer task
//! that owns the socket's sending half, and a forwarder thread that turns session events into
//! frames. Nothing a client sends can stop the session or another client: bad input gets an
//! `error` reply and the connection carries on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use demon_live::bus::{Event, RecvError};
use demon_live::control::ControlMessage;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::App;
use crate::api::{apply_control, knob_catalog, resolve, source_from_bytes};
use crate::frames::{FrameHeader, Mirror};

pub async fn handler(ws: WebSocketUpgrade, State(app): State<Arc<App>>) -> Response {
    let max = app
        .opts
        .limits
        .max_binary_bytes
        .max(app.opts.limits.max_text_bytes);
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| connection(app, socket))
}

/// Requests to the forwarder thread.
enum ForwarderCmd {
    Resync,
}

fn header(tick: u64, tick_ms: f32, decode_ms: f32, generations: u64) -> FrameHeader {
    FrameHeader {
        kind: 0,
        channels: 2,
        start_sample: 0,
        num_samples: 0,
        tick: tick as u32,
        tick_ms,
        decode_ms,
        generations: generations as u32,
    }
}

/// Token bucket for control messages.
struct RateLimit {
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_second)
            .min(self.per_second);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn err(id: &Value, code: &str, msg: impl Into<String>) -> Message {
    Message::Text(
        json!({"type": "error", "id": id, "code": code, "error": msg.into()})
            .to_string()
            .into(),
    )
}

fn reply(id: &Value, extra: Value) -> Message {
    let mut v = json!({"type": "reply", "id": id, "ok": true});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    Message::Text(v.to_string().into())
}

async fn connection(app: Arc<App>, socket: WebSocket) {
    let client_id = app.next_client.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(512);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    // Subscribe before fetching the buffer so no slice falls in between.
    let sub = app.handle.subscribe();
    let handle = app.handle.clone();
    let initial =
        tokio::task::spawn_blocking(move || handle.loop_audio(Duration::from_secs(10))).await;
    let (tick, buffer) = match initial {
        Ok(Ok(x)) => x,
        _ => {
            let _ = tx
                .send(err(
                    &Value::Null,
                    "unavailable",
                    "the session did not answer",
                ))
                .await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let state = app.handle.state();
    let ready = json!({
        "type": "ready",
        "version": 1,
        "client_id": client_id,
        "sample_rate": app.handle.sample_rate(),
        "channels": 2,
        "samples": buffer[0].len(),
        "song_seconds": buffer[0].len() as f64 / app.handle.sample_rate() as f64,
        "backend": state.as_ref().map(|s| s.backend.clone()),
        "knobs": knob_catalog(&app),
        "curves": demon_live::control::CURVE_NAMES,
        "library": app.hooks.library,
        "state": state,
    });
    let (mirror, full) = Mirror::full_frame(&buffer, header(tick, 0.0, 0.0, 0));
    if tx
        .send(Message::Text(ready.to_string().into()))
        .await
        .is_err()
        || tx.send(Message::Binary(full.into())).await.is_err()
    {
        return;
    }

    // Forwarder: session events → frames, on a blocking thread (the bus is synchronous).
    let (fwd_tx, fwd_rx) = std::sync::mpsc::channel::<ForwarderCmd>();
    let fwd_out = tx.clone();
    let fwd_handle = app.handle.clone();
    let forwarder = std::thread::Builder::new().name(format!("ws-client-{client_id}")).spawn(move || {
        let mut mirror = mirror;
        let mut last_stats = Instant::now() - Duration::from_secs(1);
        loop {
            let resync = matches!(fwd_rx.try_recv(), Ok(ForwarderCmd::Resync));
            let event = if resync {
                Some(Event::BufferReplaced { tick: 0, samples: 0, version: 0 })
            } else {
                match sub.recv_timeout(Duration::from_millis(100)) {
                    Ok(e) => e,
                    Err(RecvError::Disconnected) => break,
                }
            };
            if fwd_out.is_closed() {
                break;
            }
            let Some(event) = event else { continue };
            let msg = match event {
                Event::Audio(slice) => {
                    // Only touch the mirror for a frame that will be sent: a slow client skips
                    // slices and catches up with the next delta.
                    if fwd_out.capacity() < 8 {
                        continue;
                    }
                    let h = header(slice.tick, slice.tick_ms, slice.decode_ms, slice.generations);
                    Message::Binary(mirror.delta_frame(slice.start_sample as usize, &slice.channels, h).into())
                }
                Event::BufferReplaced { .. } => match fwd_handle.loop_audio(Duration::from_secs(10)) {
                    Ok((tick, buf)) => {
                        let (m, frame) = Mirror::full_frame(&buf, header(tick, 0.0, 0.0, 0));
                        mirror = m;
                        Message::Binary(frame.into())
                    }
                    Err(_) => continue,
                },
                Event::Stats { tick, tick_ms, decode_ms, gen_per_s, active_slots, queue, lead_ms } => {
                    if last_stats.elapsed() < Duration::from_millis(250) {
                        continue;
                    }
                    last_stats = Instant::now();
                    Message::Text(json!({"type": "stats", "tick": tick, "tick_ms": tick_ms, "decode_ms": decode_ms, "gen_per_s": gen_per_s, "active_slots": active_slots, "queue": queue, "lead_ms": lead_ms}).to_string().into())
                }
                e @ (Event::Params { .. } | Event::Applied { .. } | Event::Notice { .. }) => {
                    Message::Text(serde_json::to_string(&e).unwrap_or_default().into())
                }
            };
            if fwd_out.blocking_send(msg).is_err() {
                break;
            }
        }
    });
    if forwarder.is_err() {
        return;
    }

    let limits = app.opts.limits;
    let mut rate = RateLimit {
        tokens: limits.max_controls_per_second,
        per_second: limits.max_controls_per_second,
        last: Instant::now(),
    };
    let mut pending_upload: Option<(Value, String)> = None;
    while let Some(msg) = stream.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(_) => break,
        };
        let out = match msg {
            Message::Text(text) => {
                if text.len() > limits.max_text_bytes {
                    Some(err(
                        &Value::Null,
                        "too_large",
                        format!("text frames are limited to {} bytes", limits.max_text_bytes),
                    ))
                } else {
                    handle_text(
                        &app,
                        client_id,
                        &text,
                        &mut rate,
                        &mut pending_upload,
                        &fwd_tx,
                    )
                    .await
                }
            }
            Message::Binary(bytes) => match pending_upload.take() {
                Some((id, name)) => Some(
                    match source_from_bytes(&app, client_id, name.clone(), bytes.to_vec()).await {
                        Ok((tick, ms)) => {
                            reply(&id, json!({"tick": tick, "latency_ms": ms, "source": name}))
                        }
                        Err(e) => err(&id, "bad_upload", e),
                    },
                ),
                None => Some(err(
                    &Value::Null,
                    "bad_message",
                    "a binary frame is only expected after an `upload` request",
                )),
            },
            Message::Close(_) => break,
            _ => None,
        };
        if let Some(m) = out
            && tx.send(m).await.is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn handle_text(
    app: &Arc<App>,
    client_id: u64,
    text: &str,
    rate: &mut RateLimit,
    pending_upload: &mut Option<(Value, String)>,
    fwd: &std::sync::mpsc::Sender<ForwarderCmd>,
) -> Option<Message> {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(err(&Value::Null, "bad_json", format!("not JSON: {e}"))),
    };
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let Some(kind) = v.get("type").and_then(Value::as_str) else {
        return Some(err(&id, "bad_message", "a request needs a string `type`"));
    };
    match kind {
        "ping" => Some(Message::Text(
            json!({"type": "pong", "id": id}).to_string().into(),
        )),
        "get_state" => Some(Message::Text(
            json!({"type": "state", "id": id, "state": app.handle.state()})
                .to_string()
                .into(),
        )),
        "resync" => {
            let _ = fwd.send(ForwarderCmd::Resync);
            None
        }
        "control" => {
            if !rate.allow() {
                return Some(err(
                    &id,
                    "rate_limited",
                    format!(
                        "more than {} control messages per second",
                        app.opts.limits.max_controls_per_second
                    ),
                ));
            }
            let Some(m) = v.get("message") else {
                return Some(err(
                    &id,
                    "bad_message",
                    "a control request needs a `message`",
                ));
            };
            let message: ControlMessage = match serde_json::from_value(m.clone()) {
                Ok(m) => m,
                Err(e) => {
                    return Some(err(
                        &id,
                        "bad_message",
                        format!("not a control message: {e}"),
                    ));
                }
            };
            let message = match resolve(app, message) {
                Ok(m) => m,
                Err(e) => return Some(err(&id, "rejected", e)),
            };
            Some(match apply_control(app, client_id, message).await {
                Ok((tick, ms)) => reply(&id, json!({"tick": tick, "latency_ms": ms})),
                Err(e) => err(&id, "rejected", e),
            })
        }
        "upload" => {
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("upload")
                .to_string();
            *pending_upload = Some((id, name));
            None
        }
        "record" => {
            let action = v.get("action").and_then(Value::as_str).unwrap_or("");
            let app2 = app.clone();
            let result = match action {
                "start" => {
                    let name = format!(
                        "demon-{}-{}.wav",
                        std::process::id(),
                        app.next_client.fetch_add(1, Ordering::Relaxed)
                    );
                    let path = app.opts.recordings_dir.join(&name);
                    tokio::task::spawn_blocking(move || app2.handle.start_recording(&path, false))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r)
                        .map(|_| json!({"recording": name}))
                }
                "stop" => tokio::task::spawn_blocking(move || app2.handle.stop_recording())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
                    .map(|r| match r {
                        Some((path, seconds)) => {
                            let name = path
                                .file_name()
                                .and_then(|n| n.to_str())
                                .unwrap_or_default()
                                .to_string();
                            json!({"url": format!("/api/recordings/{name}"), "seconds": seconds})
                        }
                        None => json!({"url": null}),
                    }),
                other => Err(format!(
                    "record action `{other}` is neither `start` nor `stop`"
                )),
            };
            Some(match result {
                Ok(extra) => reply(&id, extra),
                Err(e) => err(&id, "rejected", e),
            })
        }
        "midi_learn" => {
            let Some(knob) = v.get("knob").and_then(Value::as_str) else {
                return Some(err(&id, "bad_message", "midi_learn needs a `knob`"));
            };
            Some(match app.midi.learn(knob) {
                Ok(()) => reply(&id, json!({"learning": knob, "midi": app.midi.status()})),
                Err(e) => err(&id, "rejected", e),
            })
        }
        other => Some(err(
            &id,
            "unknown_type",
            format!("unknown request type `{other}`"),
        )),
    }
}
