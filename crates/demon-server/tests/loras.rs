//! The LoRA library through the server's surfaces (issue 12, item 2): `GET /api/loras` lists
//! registered adapters, a file copied in while the server runs is picked up by the WebSocket
//! `rescan_loras` and by `POST /api/loras/rescan`, a control naming a registered adapter loads
//! it (its knob and trigger words appear), a broken file is named and refused without stopping
//! the session, and a client cannot install a file that is not in the library.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use demon_live::session::RunOptions;
use demon_sketch::adapters::{StylePrior, write_style_adapter};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::request;

fn library_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("demon-server-loras-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("groove")).unwrap();
    d
}

/// A sketch adapter that pulls toward funk, with trigger words in its header.
fn write_adapter(path: &Path, words: &str) {
    let header = BTreeMap::from([("trigger_words".to_string(), words.to_string())]);
    write_style_adapter(path, &StylePrior([0.0, 0.0, 0.0, 3.0, 0.0, 0.0]), &header).unwrap();
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = request(addr, "GET", path, "application/json", b"").await;
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn post(addr: SocketAddr, path: &str, json: &Value) -> (u16, Value) {
    let (code, body) = request(
        addr,
        "POST",
        path,
        "application/json",
        json.to_string().as_bytes(),
    )
    .await;
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn entry<'a>(loras: &'a Value, id: &str) -> &'a Value {
    loras["library"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no library entry `{id}` in {loras}"))
}

/// The WebSocket reply to request `id`, passing over everything else.
async fn ws_reply<S>(ws: &mut S, id: i64) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for the reply")
            .expect("closed")
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == json!(id) && (v["type"] == "reply" || v["type"] == "error") {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_is_listed_rescanned_loaded_and_guarded_over_rest_and_websocket() {
    let lib = library_dir("surfaces");
    write_adapter(
        &lib.join("groove/slapback.safetensors"),
        "slap bass, zorblax",
    );
    let handle = common::session_with(
        8.0,
        RunOptions {
            realtime: true,
            lora_dirs: vec![lib.clone()],
            ..Default::default()
        },
    );
    common::wait_for("the first tick", || handle.state().is_some()).await;
    let opts = common::server_options("loras", "surfaces");
    let addr = demon_server::serve(
        opts,
        handle.clone(),
        common::refusing_hooks(),
        std::future::pending(),
    )
    .await
    .unwrap();

    // Registered at start, grouped by its folder, not in the model.
    let loras = get(addr, "/api/loras").await;
    let slap = entry(&loras, "slapback");
    assert_eq!(slap["status"], "registered");
    assert_eq!(slap["group"], "groove");
    assert_eq!(
        slap["metadata"]["trigger_words"],
        json!(["slap bass", "zorblax"])
    );
    let in_model = |loras: &Value, id: &str| {
        loras["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id)
    };
    assert!(!in_model(&loras, "slapback"), "{loras}");

    // Copied in while the server runs (one good, one broken), rescanned over the WebSocket.
    write_adapter(&lib.join("dusty.safetensors"), "vinyl");
    std::fs::write(lib.join("broken.safetensors"), b"not a safetensors file").unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::Text(
        json!({"id": 1, "type": "rescan_loras"}).to_string().into(),
    ))
    .await
    .unwrap();
    let r = ws_reply(&mut ws, 1).await;
    assert_eq!(r["type"], "reply", "{r}");
    let mut added: Vec<String> = serde_json::from_value(r["added"].clone()).unwrap();
    added.sort();
    assert_eq!(added, ["broken", "dusty"]);
    assert_eq!(r["total"], 3);
    let problems = r["problems"].to_string();
    assert!(problems.contains("broken.safetensors"), "{problems}");
    let loras = get(addr, "/api/loras").await;
    assert_eq!(entry(&loras, "broken")["status"], "failed");
    assert_eq!(entry(&loras, "dusty")["status"], "registered");

    // A control naming a registered adapter loads it, then applies: its knob and trigger
    // words appear.
    let (code, ack) = post(
        addr,
        "/api/control",
        &json!({"type": "set_lora", "id": "slapback", "strength": 0.8}),
    )
    .await;
    assert_eq!(code, 200, "{ack}");
    let loras = get(addr, "/api/loras").await;
    assert_eq!(entry(&loras, "slapback")["status"], "loaded");
    assert!(in_model(&loras, "slapback"), "{loras}");
    let knobs = get(addr, "/api/knobs").await;
    assert!(
        knobs
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "lora:slapback"),
        "{knobs}"
    );
    let state = get(addr, "/api/state").await;
    assert_eq!(state["trigger_words"], json!(["slap bass", "zorblax"]));

    // The broken one is refused, naming the file; the session plays on.
    let (code, err) = post(
        addr,
        "/api/control",
        &json!({"type": "set_lora", "id": "broken", "strength": 1.0}),
    )
    .await;
    assert_eq!(code, 422, "{err}");
    assert!(err["error"].to_string().contains("broken"), "{err}");

    // A client may install only what the library holds.
    let (code, err) = post(
        addr,
        "/api/control",
        &json!({"type": "install_lora", "id": "evil", "path": "/etc/passwd"}),
    )
    .await;
    assert_eq!(code, 404, "{err}");
    assert_eq!(err["code"], "not_found");

    // The REST rescan finds nothing new and keeps the loaded adapter after its file is gone.
    std::fs::remove_file(lib.join("groove/slapback.safetensors")).unwrap();
    std::fs::remove_file(lib.join("dusty.safetensors")).unwrap();
    let (code, r) = post(addr, "/api/loras/rescan", &json!({})).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["added"], json!([]));
    assert_eq!(r["removed"], json!(["dusty"]));
    let loras = get(addr, "/api/loras").await;
    assert_eq!(entry(&loras, "slapback")["status"], "loaded");
    // Without a JSON body type the rescan is refused (a form post from another page).
    let (code, _) = request(addr, "POST", "/api/loras/rescan", "text/plain", b"").await;
    assert_eq!(code, 415);

    let before = handle.state().unwrap().tick;
    common::wait_for("ticks after the refusals", || {
        handle.state().is_some_and(|s| s.tick > before + 5)
    })
    .await;
    let _ = std::fs::remove_dir_all(&lib);
}
