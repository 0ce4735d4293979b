//! Access tokens: required on every HTTP, WebSocket and MCP request when a token is set.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::protocol::{ApiError, ErrorCode};
use crate::rest::error_response;
use crate::service::Service;

/// Compare without leaking the position of the first difference through timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token a request carries: `Authorization: Bearer T` or `?token=T`.
pub fn request_token(req: &Request) -> Option<String> {
    if let Some(h) = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = h.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_string());
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
    })
}

pub async fn require_token(State(svc): State<Arc<Service>>, req: Request, next: Next) -> Response {
    if let Some(want) = &svc.options().token {
        match request_token(&req) {
            Some(got) if same(&got, want) => {}
            _ => {
                return error_response(ApiError::new(
                    ErrorCode::Unauthorized,
                    "missing or wrong access token",
                ));
            }
        }
    }
    next.run(req).await
}
