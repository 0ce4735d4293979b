//! docs/protocol.md cannot drift from `protocol.rs`: every JSON example in it is tagged with the
//! type it shows (` ```json server ` …), parses into that type, and serialises back to the same
//! JSON (so a renamed, missing or extra field fails). Every message type, request type, control
//! message and error code has an example or a row in the document.

use std::collections::BTreeSet;

use demon_engine::CurveSpec;
use demon_live::control::ControlMessage;
use demon_server::protocol::{
    AckBody, ClientMessage, ErrorBody, ErrorCode, Health, KnobInfo, Loras, Request, ServerMessage,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(tag, examples)` of every fenced block whose info string starts with `json`. A block is one
/// JSON value, or one value per line.
fn json_blocks(doc: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in doc.lines() {
        if let Some(info) = line.strip_prefix("```") {
            match current.take() {
                Some((tag, lines)) => {
                    let whole = lines.join("\n");
                    let values = if serde_json::from_str::<Value>(&whole).is_ok() {
                        vec![whole]
                    } else {
                        lines.into_iter().filter(|l| !l.trim().is_empty()).collect()
                    };
                    out.push((tag, values));
                }
                None => {
                    if let Some(tag) = info.trim().strip_prefix("json") {
                        current = Some((tag.trim().to_string(), Vec::new()));
                    } else {
                        // Another language's block: skip to its end.
                        current = Some(("-".into(), Vec::new()));
                    }
                }
            }
            continue;
        }
        if let Some((_, lines)) = current.as_mut() {
            lines.push(line.to_string());
        }
    }
    assert!(current.is_none(), "an unterminated code block");
    out.retain(|(tag, _)| tag != "-");
    out
}

/// Equal JSON, with numbers compared by value (`60` and `60.0` are the same number).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Parse `text` as `T` and check it serialises back to the same JSON; returns the value.
fn round_trip<T: Serialize + DeserializeOwned>(tag: &str, text: &str) -> T {
    let parsed: T = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("`json {tag}` example does not parse: {e}\n{text}"));
    let original: Value = serde_json::from_str(text).unwrap();
    let again: Value = serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
    assert!(
        same_json(&original, &again),
        "`json {tag}` example changes on a round trip:\n  doc:  {original}\n  code: {again}"
    );
    parsed
}

fn type_of(v: &impl Serialize) -> String {
    serde_json::to_value(v).unwrap()["type"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_example_in_protocol_md_parses_into_the_protocol_types() {
    let doc = doc();
    let blocks = json_blocks(&doc);
    let mut server_types = BTreeSet::new();
    let mut request_types = BTreeSet::new();
    let mut control_types = BTreeSet::new();
    let mut examples = 0;
    for (tag, values) in &blocks {
        for text in values {
            examples += 1;
            match tag.as_str() {
                "server" => {
                    let m: ServerMessage = round_trip(tag, text);
                    server_types.insert(type_of(&m));
                }
                "client" => {
                    let m: ClientMessage = round_trip(tag, text);
                    request_types.insert(type_of(&m.request));
                    if let Request::Control { message } = &m.request {
                        control_types.insert(type_of(message));
                    }
                }
                "control" => {
                    let m: ControlMessage = round_trip(tag, text);
                    control_types.insert(type_of(&m));
                }
                "curve" => {
                    round_trip::<CurveSpec>(tag, text);
                }
                "health" => {
                    round_trip::<Health>(tag, text);
                }
                "knobs" => {
                    round_trip::<Vec<KnobInfo>>(tag, text);
                }
                "preset" => {
                    round_trip::<demon_live::preset::Preset>(tag, text);
                }
                "ack" => {
                    round_trip::<AckBody>(tag, text);
                }
                "loras" => {
                    round_trip::<Loras>(tag, text);
                }
                "error_body" => {
                    round_trip::<ErrorBody>(tag, text);
                }
                other => panic!(
                    "a ```json block tagged `{other}`: tag it with the type it shows (server, client, control, curve, health, knobs, ack, error_body, preset, loras)"
                ),
            }
        }
    }
    assert!(examples >= 40, "only {examples} examples found");

    let want: BTreeSet<String> = [
        "ready", "reply", "error", "applied", "stats", "params", "state", "notice", "pong",
        "reflects", "preset",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(server_types, want, "every server message has an example");
    let want: BTreeSet<String> = Request::TYPES.iter().map(|s| s.to_string()).collect();
    assert_eq!(request_types, want, "every request type has an example");
    for t in [
        "set_knob",
        "set_knobs",
        "set_curve",
        "set_prompt",
        "set_solver",
        "set_cfg_mode",
        "set_dcw",
        "set_source",
        "set_reference",
        "set_lora",
        "install_lora",
        "set_loop_band",
        "clear_loop_band",
        "seek",
        "set_playing",
        "set_slew",
    ] {
        assert!(control_types.contains(t), "no example of the control `{t}`");
    }
}

#[test]
fn the_error_code_table_lists_exactly_the_codes_with_their_statuses() {
    let doc = doc();
    let section = doc
        .split("## Error codes")
        .nth(1)
        .expect("an `## Error codes` section");
    let mut listed = Vec::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, code, status, _meaning, _] = cells.as_slice()
            && let Some(code) = code.strip_prefix('`').and_then(|c| c.strip_suffix('`'))
        {
            let parsed: ErrorCode = serde_json::from_value(Value::from(code))
                .unwrap_or_else(|_| panic!("`{code}` in the table is not an error code"));
            assert_eq!(
                status.parse::<u16>().ok(),
                Some(parsed.http_status()),
                "the status of `{code}`"
            );
            listed.push(parsed);
        }
    }
    assert_eq!(
        listed,
        ErrorCode::ALL,
        "the table lists every code, in order"
    );
}

#[test]
fn untagged_or_mistyped_examples_are_caught() {
    // The checks above can fail: a renamed field, a missing field and an unknown tag.
    let renamed = r#"{"type": "stats", "tick": 1, "tick_ms": 1.0, "decode_ms": 1.0, "gen_per_s": 1.0, "slots": 4, "queue": 0, "lead_ms": 1.0}"#;
    assert!(serde_json::from_str::<ServerMessage>(renamed).is_err());
    let extra = r#"{"type": "pong", "id": 3, "latency": 5}"#;
    let parsed: ServerMessage = serde_json::from_str(extra).unwrap();
    let again: Value = serde_json::to_value(&parsed).unwrap();
    assert!(
        !same_json(&serde_json::from_str(extra).unwrap(), &again),
        "an extra field is caught by the round trip"
    );
    let blocks = json_blocks("```json\n{}\n```\n```sh\nls\n```\n");
    assert_eq!(blocks, vec![(String::new(), vec!["{}".to_string()])]);
}
