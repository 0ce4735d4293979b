//! The HTTP surface: UI assets, REST, the WebSocket upgrade and MCP, all behind the token check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use demon_live::control::{ControlMessage, KNOBS};
use serde::Deserialize;
use serde_json::json;

use crate::{App, auth, mcp, ws};

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const WORKLET_JS: &str = include_str!("../web/worklet.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

pub fn router(app: Arc<App>) -> Router {
    let mcp_service = mcp::service(app.clone());
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route(
            "/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], APP_JS) }),
        )
        .route(
            "/worklet.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], WORKLET_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE_CSS) }),
        )
        .route("/ws", get(ws::handler))
        .route("/api/health", get(health))
        .route("/api/state", get(state))
        .route("/api/knobs", get(knobs))
        .route("/api/library", get(library))
        .route("/api/control", post(control))
        .route("/api/source", post(upload_source))
        .route("/api/recordings/{name}", get(recording))
        .route("/api/loop.wav", get(loop_wav))
        .nest_service("/mcp", mcp_service)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(app.opts.limits.max_binary_bytes))
        .with_state(app)
}

fn error(status: StatusCode, code: &str, msg: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"ok": false, "code": code, "error": msg.into()})),
    )
        .into_response()
}

async fn health(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let st = app.handle.state();
    Json(
        json!({"ok": true, "backend": st.as_ref().map(|s| s.backend.clone()), "tick": st.as_ref().map(|s| s.tick)}),
    )
}

async fn state(State(app): State<Arc<App>>) -> Response {
    match app.handle.state() {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_session",
            "the session has not started",
        ),
    }
}

/// The knob catalog plus one `lora:<id>` knob per adapter the backend has.
pub fn knob_catalog(app: &App) -> serde_json::Value {
    let mut list: Vec<serde_json::Value> = KNOBS
        .iter()
        .map(|k| serde_json::to_value(k).unwrap_or_default())
        .collect();
    if let Some(st) = app.handle.state() {
        for a in st.adapters {
            list.push(json!({
                "name": format!("lora:{}", a.id), "min": 0.0, "max": 2.0, "default": 0.0, "integer": false,
                "slewed": true, "class": "global_weights", "help": format!("Strength of adapter `{}` (0 = off).", a.id)
            }));
        }
    }
    json!(list)
}

async fn knobs(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(knob_catalog(&app))
}

async fn library(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!(app.hooks.library))
}

/// Apply one control message from a thread that may block until the next tick.
pub async fn apply_control(
    app: &Arc<App>,
    origin: u64,
    message: ControlMessage,
) -> Result<(u64, f64), String> {
    let app = app.clone();
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || {
        app.handle.control(origin, message, Duration::from_secs(10))
    })
    .await
    .map_err(|e| format!("internal error: {e}"))?
    .map(|tick| (tick, t0.elapsed().as_secs_f64() * 1000.0))
}

async fn control(State(app): State<Arc<App>>, body: Bytes) -> Response {
    if body.len() > app.opts.limits.max_text_bytes {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "control messages are limited to {} bytes",
                app.opts.limits.max_text_bytes
            ),
        );
    }
    let message: ControlMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_message",
                format!("not a control message: {e}"),
            );
        }
    };
    let message = match resolve(&app, message) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "rejected", e),
    };
    match apply_control(&app, 0, message).await {
        Ok((tick, ms)) => Json(json!({"ok": true, "tick": tick, "latency_ms": ms})).into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, "rejected", e),
    }
}

/// Resolve library and file sources (the runner only takes audio or latents).
pub fn resolve(app: &App, message: ControlMessage) -> Result<ControlMessage, String> {
    use demon_live::control::SourceSpec;
    match &message {
        ControlMessage::SetSource {
            source: SourceSpec::Library { style, index },
        } => Ok(ControlMessage::SetSource {
            source: (app.hooks.resolve_source)(&format!("library:{style}:{index}"))?,
        }),
        ControlMessage::SetSource {
            source: SourceSpec::File { path },
        } => Ok(ControlMessage::SetSource {
            source: (app.hooks.resolve_source)(path)?,
        }),
        _ => Ok(message),
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

/// Decode an upload completely, then make it the source; a bad file leaves the old source.
pub async fn source_from_bytes(
    app: &Arc<App>,
    origin: u64,
    name: String,
    bytes: Vec<u8>,
) -> Result<(u64, f64), String> {
    let limits = demon_audio::LoadLimits {
        max_seconds: app.opts.limits.max_upload_seconds,
    };
    let sr = app.handle.sample_rate();
    let decoded = tokio::task::spawn_blocking(move || {
        demon_audio::decode_bytes(bytes, &name, limits).map(|d| (name, d.to_stereo(sr)))
    })
    .await
    .map_err(|e| format!("internal error: {e}"))?
    .map_err(|e| e.to_string())?;
    let (name, audio) = decoded;
    let source = demon_live::control::SourceSpec::Audio {
        name,
        channels: audio.channels,
    };
    apply_control(app, origin, ControlMessage::SetSource { source }).await
}

async fn upload_source(
    State(app): State<Arc<App>>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> Response {
    let name = q.name.unwrap_or_else(|| "upload".into());
    match source_from_bytes(&app, 0, name.clone(), body.to_vec()).await {
        Ok((tick, ms)) => Json(json!({"ok": true, "tick": tick, "latency_ms": ms, "source": name}))
            .into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, "bad_upload", e),
    }
}

/// What the loop holds right now, as a 32-bit float WAV.
async fn loop_wav(State(app): State<Arc<App>>) -> Response {
    let h = app.handle.clone();
    let sr = h.sample_rate();
    match tokio::task::spawn_blocking(move || h.loop_audio(Duration::from_secs(10))).await {
        Ok(Ok((_, buf))) => {
            let audio = demon_engine::Audio {
                sample_rate: sr,
                channels: buf.to_vec(),
            };
            let bytes = demon_audio::wav_bytes(&audio, demon_audio::WavFormat::Float32, None);
            ([(header::CONTENT_TYPE, "audio/wav")], bytes).into_response()
        }
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the session did not answer",
        ),
    }
}

async fn recording(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    if name.contains('/') || name.contains("..") || !name.ends_with(".wav") {
        return error(StatusCode::BAD_REQUEST, "bad_name", "not a recording name");
    }
    match tokio::fs::read(app.opts.recordings_dir.join(&name)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "audio/wav"),
                (header::CONTENT_DISPOSITION, "attachment"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no recording `{name}`"),
        ),
    }
}
