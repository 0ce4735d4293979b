//! `demon mcp`: MCP's stdio transport for clients that only speak stdio, bridged to the
//! streamable-HTTP endpoint (`/mcp`) of a running `demon serve`.
//!
//! The stdio transport allows nothing but JSON-RPC messages on stdout, one per line, so every
//! failure of the bridge itself (server down, an answer that is not JSON-RPC, a line that is not
//! JSON) becomes a JSON-RPC error reply to the request that met it; diagnostics go to stderr.

use std::io::{BufRead, Read, Write};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};

/// How long a connection attempt may take before the request is answered with an error: well
/// under the 2 s a client waits for a reply from a bridge whose server is down.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// JSON-RPC 2.0: the message is not valid JSON.
const PARSE_ERROR: i64 = -32700;
/// JSON-RPC 2.0: valid JSON that is not a request object (nor a batch of them).
const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC 2.0 reserves -32000..-32099 for implementation-defined server errors: here, the
/// bridge could not get a JSON-RPC answer from `demon serve`.
const BRIDGE_ERROR: i64 = -32000;

/// How much of a non-JSON-RPC answer body an error message quotes.
const QUOTED_BODY_CHARS: usize = 200;

#[derive(Args, Debug)]
pub struct McpArgs {
    /// The running `demon serve`.
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    pub url: String,
    /// Access token of the server (`demon serve --token`).
    #[arg(long, env = "DEMON_TOKEN")]
    pub token: Option<String>,
}

/// Reads JSON-RPC lines on stdin, posts each to `/mcp`, writes the answers (plain JSON or
/// server-sent events) to stdout, one message per line, until stdin closes.
pub fn run(args: McpArgs) -> Result<()> {
    let url = format!("{}/mcp", args.url.trim_end_matches('/'));
    if !url.starts_with("http://") {
        bail!("--url must be an http:// address of a running `demon serve`");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .build()
        .into();
    let mut bridge = Bridge {
        agent,
        url,
        token: args.token,
        session: None,
    };
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        for reply in bridge.answer(text) {
            writeln!(stdout, "{reply}")?;
        }
        stdout.flush()?;
    }
}

struct Bridge {
    agent: ureq::Agent,
    /// `…/mcp` of the server.
    url: String,
    token: Option<String>,
    /// `Mcp-Session-Id` the server assigned at `initialize`.
    session: Option<String>,
}

impl Bridge {
    /// The messages to write for one input line: the server's answers, or errors of the bridge
    /// addressed to the line's requests (notifications and responses get none).
    fn answer(&mut self, line: &[u8]) -> Vec<Value> {
        let message: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                let why = format!("parse error: {e}");
                return vec![error_reply(Value::Null, PARSE_ERROR, &why)];
            }
        };
        if !(message.is_object() || message.is_array()) {
            let why = "invalid request: a JSON-RPC message is an object or an array of them";
            return vec![error_reply(Value::Null, INVALID_REQUEST, why)];
        }
        match self.post(line) {
            Ok(replies) => replies,
            Err(why) => {
                eprintln!("demon mcp: {why}");
                request_ids(&message)
                    .into_iter()
                    .map(|id| error_reply(id, BRIDGE_ERROR, &why))
                    .collect()
            }
        }
    }

    /// Posts one message; `Err` says, naming the URL, why no JSON-RPC answer came back.
    fn post(&mut self, body: &[u8]) -> Result<Vec<Value>, String> {
        let url = &self.url;
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream");
        if let Some(s) = &self.session {
            req = req.header("Mcp-Session-Id", s);
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req
            .send(body)
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = resp.status();
        if let Some(s) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            self.session = Some(s.to_string());
        } else if status == 404 && self.session.is_some() {
            // The server forgot the session (it restarted): the client must initialize again.
            self.session = None;
        }
        let is_sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("text/event-stream"));
        let mut text = String::new();
        resp.body_mut()
            .as_reader()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the answer of {url}: {e}"))?;
        let payloads = if is_sse {
            sse_data(&text)
        } else if text.trim().is_empty() {
            Vec::new()
        } else {
            vec![text.trim().to_string()]
        };
        let mut replies = Vec::with_capacity(payloads.len());
        for p in &payloads {
            match serde_json::from_str::<Value>(p) {
                Ok(v) if is_jsonrpc(&v) => replies.push(v),
                _ => {
                    let quoted: String = p.chars().take(QUOTED_BODY_CHARS).collect();
                    return Err(format!(
                        "{url} answered HTTP {} with something that is not JSON-RPC: {quoted}",
                        status.as_u16()
                    ));
                }
            }
        }
        if replies.is_empty() && !status.is_success() {
            return Err(format!("{url} answered HTTP {}", status.as_u16()));
        }
        Ok(replies)
    }
}

/// The `data:` payloads of a server-sent event stream, one per event (multi-line data joined
/// with `\n`, as the SSE format says).
fn sse_data(text: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for l in text.lines() {
        if l.is_empty() {
            events.extend(data.take());
        } else if let Some(d) = l.strip_prefix("data:") {
            let d = d.strip_prefix(' ').unwrap_or(d);
            match &mut data {
                Some(acc) => {
                    acc.push('\n');
                    acc.push_str(d);
                }
                None => data = Some(d.to_string()),
            }
        }
    }
    events.extend(data);
    events.retain(|d| !d.trim().is_empty());
    events
}

/// A JSON-RPC message or batch (an answer from the server a client can read).
fn is_jsonrpc(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.get("jsonrpc").and_then(Value::as_str) == Some("2.0"),
        Value::Array(items) => !items.is_empty() && items.iter().all(is_jsonrpc),
        _ => false,
    }
}

/// The ids of the requests in a message or batch: a request has a `method` and an `id`;
/// notifications and responses are not answered.
fn request_ids(message: &Value) -> Vec<Value> {
    let one = |m: &Value| match (m.get("method"), m.get("id")) {
        (Some(_), Some(id)) => Some(id.clone()),
        _ => None,
    };
    match message {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

fn error_reply(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_and_multiline_data_joined() {
        let text = "event: message\ndata: {\"a\":1}\n\ndata: {\"b\":\ndata: 2}\n\n: comment\n";
        assert_eq!(sse_data(text), vec!["{\"a\":1}", "{\"b\":\n2}"]);
    }

    #[test]
    fn only_requests_are_answered() {
        let batch = json!([
            {"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 8, "result": {}},
        ]);
        assert_eq!(request_ids(&batch), vec![json!(7)]);
    }
}
