//! Who may talk to the server, checked on every HTTP route, the WebSocket upgrade and `/mcp`
//! alike (docs/protocol.md "Security"):
//!
//! - `Host`: loopback names (`localhost`, `127.0.0.1`, `[::1]`), the bound address or a name
//!   given by `--allow-host`; with an access token set, any host. This stops DNS rebinding (a
//!   page whose own name resolves to 127.0.0.1).
//! - `Origin` (sent by browsers): only the server's own (`http://` + the request's `Host`) or one
//!   given by `--allow-origin`; requests without `Origin` (CLI tools, SDKs) pass. This stops any
//!   other web page from driving a loopback server.
//! - State-changing requests: `POST /api/control` and `POST /mcp` must be `application/json`,
//!   `POST /api/source` an audio or `application/octet-stream` body, so no cross-site form can
//!   post one.
//! - Body size: a `Content-Length` over the route's limit (uploads: `max_binary_bytes`,
//!   everything else: `max_text_bytes`) is refused before a byte of the body is read.
//! - The access token, when set: `Authorization: Bearer T` or `?token=T`, compared through
//!   fixed-size digests so neither its content nor its length leaks through timing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::options::{Limits, ServerOptions};
use crate::protocol::{ApiError, ErrorCode};
use crate::rest::error_response;
use crate::service::Service;

/// Compare in time independent of where they differ and of their lengths: both sides are
/// hashed to 32 bytes first.
pub fn same_token(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// The token a request carries: `Authorization: Bearer T` or `?token=T`.
pub fn request_token(req: &Request) -> Option<String> {
    if let Some(h) = req
        .headers()
        .get(header::AUTHORIZATION)
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

/// The host part of a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`), lower-cased.
fn host_name(host: &str) -> String {
    let h = host.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        h.rsplit_once(':').map_or(h, |(n, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                n
            } else {
                h
            }
        })
    };
    name.to_ascii_lowercase()
}

/// Whether a `Host` header may reach this server. The port is not compared: a rebinding
/// attack needs a name of its own, and proxies in front of the server keep loopback names.
pub fn host_allowed(opts: &ServerOptions, host: &str) -> bool {
    if opts.token.is_some() {
        return true;
    }
    let name = host_name(host);
    let bound = opts.bind.ip().to_string().to_ascii_lowercase();
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
        || name == bound
        || opts
            .allow_hosts
            .iter()
            .any(|a| host_name(a) == name && !name.is_empty())
}

/// Whether a browser `Origin` may drive this server: its own page, or one allowed by name.
pub fn origin_allowed(opts: &ServerOptions, origin: &str, host: Option<&str>) -> bool {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if let Some(h) = host {
        let h = h.trim().to_ascii_lowercase();
        if origin == format!("http://{h}") || origin == format!("https://{h}") {
            return true;
        }
    }
    opts.allow_origins
        .iter()
        .any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(&origin))
}

/// The media type of a request body, without parameters, lower-cased.
fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

/// `None` when the body type fits the route; otherwise what it should have been.
fn wrong_body_type(method: &Method, path: &str, headers: &HeaderMap) -> Option<&'static str> {
    if method != Method::POST {
        return None;
    }
    let ct = content_type(headers);
    if path == "/api/source" {
        // Tools that send no type at all pass; a browser form always sends one.
        return match ct.as_deref() {
            None | Some("application/octet-stream") => None,
            Some(t) if t.starts_with("audio/") => None,
            _ => Some("an audio type or application/octet-stream"),
        };
    }
    match ct.as_deref() {
        Some("application/json") => None,
        _ => Some("application/json"),
    }
}

/// The most body bytes a route reads.
pub fn body_limit(limits: &Limits, path: &str) -> usize {
    if path == "/api/source" {
        limits.max_binary_bytes
    } else {
        limits.max_text_bytes
    }
}

fn refuse(code: ErrorCode, message: String) -> Response {
    error_response(ApiError::new(code, message))
}

/// The checks above, in front of every route.
pub async fn guard(State(svc): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let opts = svc.options();
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(h) = host
        && !host_allowed(opts, h)
    {
        return refuse(
            ErrorCode::Forbidden,
            format!("Host `{h}` is not this server's (allow it with --allow-host, or set --token)"),
        );
    }
    if let Some(o) = headers.get(header::ORIGIN) {
        let o = o.to_str().unwrap_or("(not text)");
        if !origin_allowed(opts, o, host) {
            return refuse(
                ErrorCode::Forbidden,
                format!("Origin `{o}` may not use this server (allow it with --allow-origin)"),
            );
        }
    }
    let limit = body_limit(&svc.limits(), req.uri().path());
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && len > limit as u64
    {
        return refuse(
            ErrorCode::TooLarge,
            format!(
                "a body of {len} bytes is over the limit of {limit} bytes for {}",
                req.uri().path()
            ),
        );
    }
    if let Some(want) = wrong_body_type(req.method(), req.uri().path(), headers) {
        return refuse(
            ErrorCode::UnsupportedMediaType,
            format!("this request needs a Content-Type of {want}"),
        );
    }
    if let Some(want) = &opts.token {
        match request_token(&req) {
            Some(got) if same_token(&got, want) => {}
            _ => {
                return refuse(
                    ErrorCode::Unauthorized,
                    "missing or wrong access token".into(),
                );
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ServerOptions {
        ServerOptions::loopback(7878)
    }

    #[test]
    fn tokens_compare_by_content_only() {
        assert!(same_token("sesame-open-please", "sesame-open-please"));
        assert!(!same_token("sesame-open-please", "sesame-open-pleasf"));
        assert!(!same_token("sesame", "sesame-open-please"));
        assert!(!same_token("", "x"));
    }

    #[test]
    fn hosts_are_loopback_bound_or_allowed() {
        let mut o = opts();
        for ok in [
            "localhost:7878",
            "LOCALHOST",
            "127.0.0.1:7878",
            "127.0.0.1:7880",
            "[::1]:7878",
            "[::1]",
        ] {
            assert!(host_allowed(&o, ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7878",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!host_allowed(&o, bad), "{bad}");
        }
        o.allow_hosts = vec!["studio.local".into()];
        assert!(host_allowed(&o, "studio.local:7878"));
        assert!(!host_allowed(&o, "evil.example"));
        o.token = Some("sesame-open-please".into());
        assert!(host_allowed(&o, "evil.example"), "with a token any host");
    }

    #[test]
    fn origins_are_the_servers_own_or_allowed() {
        let mut o = opts();
        let host = Some("127.0.0.1:7878");
        assert!(origin_allowed(&o, "http://127.0.0.1:7878", host));
        assert!(!origin_allowed(&o, "http://evil.example", host));
        assert!(!origin_allowed(&o, "null", host));
        assert!(!origin_allowed(&o, "http://127.0.0.1:9999", host));
        o.allow_origins = vec!["https://app.example/".into()];
        assert!(origin_allowed(&o, "https://app.example", host));
    }

    #[test]
    fn state_changing_posts_need_their_body_type() {
        let h = |ct: Option<&str>| {
            let mut m = HeaderMap::new();
            if let Some(ct) = ct {
                m.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            }
            m
        };
        let post = Method::POST;
        let json = h(Some("application/json; charset=utf-8"));
        assert_eq!(wrong_body_type(&post, "/api/control", &json), None);
        assert!(wrong_body_type(&post, "/api/control", &h(Some("text/plain"))).is_some());
        assert!(wrong_body_type(&post, "/api/control", &h(None)).is_some());
        assert!(wrong_body_type(&post, "/mcp", &h(Some("text/plain"))).is_some());
        assert_eq!(
            wrong_body_type(&post, "/api/source", &h(Some("audio/wav"))),
            None
        );
        assert_eq!(wrong_body_type(&post, "/api/source", &h(None)), None);
        assert!(wrong_body_type(&post, "/api/source", &h(Some("text/plain"))).is_some());
        assert_eq!(wrong_body_type(&Method::GET, "/api/state", &h(None)), None);
    }
}
