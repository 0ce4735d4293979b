//! REST (docs/protocol.md, the table of paths): health, state, the knob catalog, the library,
//! one control per `POST /api/control`, presets (`GET`/`POST /api/preset`), source uploads, recordings and the loop as a WAV
//! (streamed piece by piece). Each handler is a call of the service; errors carry the status of
//! their code (`protocol::ErrorCode::http_status`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use demon_live::control::ReferenceRole;
use serde::Deserialize;

use crate::protocol::{AckBody, ApiError, ErrorBody};
use crate::service::{Origin, Service};

/// An error as a REST response: its code's status and `{"ok": false, "code", "error"}`.
pub fn error_response(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(ErrorBody::from(e))).into_response()
}

fn ack(result: Result<crate::protocol::ControlAck, ApiError>) -> Response {
    match result {
        Ok(a) => Json(AckBody {
            ok: true,
            result: a,
        })
        .into_response(),
        Err(e) => error_response(e),
    }
}

pub async fn health(State(svc): State<Arc<Service>>) -> Response {
    Json(svc.health()).into_response()
}

pub async fn state(State(svc): State<Arc<Service>>) -> Response {
    match svc.state() {
        Ok(s) => Json(s).into_response(),
        Err(e) => error_response(e),
    }
}

pub async fn knobs(State(svc): State<Arc<Service>>) -> Response {
    Json(svc.knobs()).into_response()
}

pub async fn library(State(svc): State<Arc<Service>>) -> Response {
    Json(svc.library()).into_response()
}

/// The adapters in the model and the LoRA library (docs/protocol.md, "LoRA library").
pub async fn loras(State(svc): State<Arc<Service>>) -> Response {
    match svc.loras() {
        Ok(l) => Json(l).into_response(),
        Err(e) => error_response(e),
    }
}

/// Scan the LoRA folders again; answers what changed.
pub async fn rescan_loras(State(svc): State<Arc<Service>>) -> Response {
    match svc.rescan_loras().await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error_response(e),
    }
}

pub async fn control(State(svc): State<Arc<Service>>, body: Bytes) -> Response {
    let message = match svc.parse_control(&body) {
        Ok(m) => m,
        Err(e) => return error_response(e),
    };
    ack(svc.apply(Origin::Rest, message).await)
}

/// The performer-set state as a preset (docs/protocol.md, "Presets").
pub async fn get_preset(State(svc): State<Arc<Service>>) -> Response {
    match svc.preset().await {
        Ok(p) => Json(p).into_response(),
        Err(e) => error_response(e),
    }
}

/// Load a preset (`application/json`, the text body limit); a bad one is refused with the
/// field named and nothing changes.
pub async fn load_preset(State(svc): State<Arc<Service>>, body: Bytes) -> Response {
    if let Err(e) = svc.check_text_size(body.len(), "presets") {
        return error_response(e);
    }
    ack(svc.load_preset(Origin::Rest, &body).await)
}

#[derive(Deserialize)]
pub struct AnalyzeQuery {
    source: Option<String>,
}

/// Tempo, key, duration and loudness of the playing source, or of `?source=FILE` in the media
/// folders (docs/protocol.md, "Analysis").
pub async fn analyze(State(svc): State<Arc<Service>>, Query(q): Query<AnalyzeQuery>) -> Response {
    match svc.analyze(q.source).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize)]
pub struct UploadQuery {
    name: Option<String>,
    /// `timbre` or `structure`: the upload becomes that reference instead of the source.
    role: Option<ReferenceRole>,
}

pub async fn upload_source(
    State(svc): State<Arc<Service>>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> Response {
    let name = q.name.unwrap_or_else(|| "upload".into());
    ack(svc.upload(Origin::Rest, name, q.role, body.to_vec()).await)
}

/// The loop as a WAV, streamed: each piece is converted when the connection is ready for it.
pub async fn loop_wav(State(svc): State<Arc<Service>>) -> Response {
    match svc.loop_wav().await {
        Ok(wav) => {
            let len = wav.len_bytes();
            let pieces = wav
                .pieces()
                .map(|p| Ok::<_, std::convert::Infallible>(Bytes::from(p)));
            (
                [
                    (header::CONTENT_TYPE, "audio/wav".to_string()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                Body::from_stream(futures_util::stream::iter(pieces)),
            )
                .into_response()
        }
        Err(e) => error_response(e),
    }
}

pub async fn recording(State(svc): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    match svc.recording(&name).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "audio/wav"),
                (header::CONTENT_DISPOSITION, "attachment"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}
