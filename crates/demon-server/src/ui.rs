//! The performer's web UI (`web/`), embedded in the binary: no build step, no files to find.

use axum::http::header;
use axum::response::{Html, IntoResponse};

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const WORKLET_JS: &str = include_str!("../web/worklet.js");
const STYLE_CSS: &str = include_str!("../web/style.css");
/// The zstd decoder the page decodes compressed deltas with (fzstd, MIT; `web/vendor/`).
const FZSTD_JS: &str = include_str!("../web/vendor/fzstd.mjs");

pub async fn index() -> impl IntoResponse {
    Html(INDEX_HTML)
}

pub async fn app_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript")], APP_JS)
}

pub async fn worklet_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript")], WORKLET_JS)
}

pub async fn fzstd_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript")], FZSTD_JS)
}

pub async fn style_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css")], STYLE_CSS)
}
