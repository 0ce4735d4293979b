//! Presets against live sketch sessions (issue 10, item 5): a state set through controls,
//! saved with `GET /api/preset` and loaded into a new server with `--load` (the server's
//! `load` option, what `demon serve --load` sets), gives the same `/api/state`; so does the
//! last state of a session recording. A bad preset is refused naming the field, and the
//! running session is unchanged.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use demon_live::BackendFacts;
use demon_live::session::{RunOptions, SessionHandle};
use demon_server::{Hooks, ServerOptions};
use serde_json::Value;

use common::request;

/// Library sources resolve to a latent made from the name (100 frames: 4 s), so a preset's
/// library reference is resolved again by the new server.
fn hooks() -> Hooks {
    Hooks {
        resolve_source: Arc::new(|spec: &str| {
            let seed = spec.bytes().map(u32::from).sum::<u32>() as f32;
            let v: Vec<f32> = (0..100 * 64)
                .map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.5)
                .collect();
            let t = Tensor::from_vec(v, (1, 100, 64), &Device::Cpu)?;
            demon_live::core::latent_spec(spec, &t)
        }),
        library: vec!["library:funk:1".into()],
        render_offline: Arc::new(|_| {
            Err(demon_live::SessionError::bad_value(
                "render_offline",
                "not in tests",
            ))
        }),
    }
}

async fn serve(o: ServerOptions, handle: SessionHandle) -> SocketAddr {
    demon_server::serve(o, handle, hooks(), std::future::pending())
        .await
        .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = request(addr, "GET", path, "application/json", b"").await;
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn post(addr: SocketAddr, path: &str, json: &str) -> (u16, String) {
    request(addr, "POST", path, "application/json", json.as_bytes()).await
}

/// The fields of a state that are state (not counters or clocks).
fn state_fields(mut s: Value) -> Value {
    let m = s.as_object_mut().unwrap();
    for clock in [
        "tick",
        "playhead_seconds",
        "chunk_offset_seconds",
        "realtime",
        "active_slots",
        "queue",
        "generations",
        "tick_ms",
        "decode_ms",
        "lead_ms",
        // The meter reads what plays (the matcher's target and mode are knobs, compared).
        "loudness",
    ] {
        assert!(m.remove(clock).is_some(), "{clock} is in the state");
    }
    s
}

/// The state once every slewed knob has reached its target.
async fn settled_state(addr: SocketAddr) -> Value {
    let t0 = Instant::now();
    loop {
        let s = get(addr, "/api/state").await;
        if s["knobs"] == s["targets"] {
            return state_fields(s);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "knobs never settled: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CONTROLS: [&str; 10] = [
    r#"{"type":"set_source","source":{"kind":"library","style":"funk","index":1}}"#,
    // A reference, carried by the preset and found again through the library.
    r#"{"type":"set_reference","role":"timbre","source":{"kind":"library","style":"funk","index":1}}"#,
    r#"{"type":"set_knobs","values":{"denoise":0.35,"seed":7,"depth":2,"steps":4,"velocity_scale":1.5,"ch_g3":0.5}}"#,
    r#"{"type":"set_curve","name":"blend","curve":{"type":"ramp","start":0.0,"end":1.0}}"#,
    r#"{"type":"set_prompt","prompt":"techno, dark","prompt_b":"ambient","negative":"noise","bpm":128,"key":"A minor"}"#,
    r#"{"type":"set_solver","solver":"sde"}"#,
    r#"{"type":"set_cfg_mode","mode":"full"}"#,
    r#"{"type":"set_dcw","enabled":false}"#,
    r#"{"type":"set_slew","per_second":3.0}"#,
    r#"{"type":"set_loop_band","start_s":0.5,"end_s":2.0}"#,
];

async fn set_state(addr: SocketAddr) {
    for c in CONTROLS {
        let (code, body) = post(addr, "/api/control", c).await;
        assert_eq!(code, 200, "{c}: {body}");
    }
}

fn facts() -> BackendFacts {
    BackendFacts::of(&mut common::sketch())
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("demon-presets-{}-{name}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_preset_loaded_into_a_new_server_gives_the_same_state() {
    let a = serve(common::server_options("presets", "a"), common::session(8.0)).await;
    set_state(a).await;
    let before = settled_state(a).await;
    assert_eq!(before["source"], "library:funk:1");
    assert_eq!(before["song_seconds"], 4.0, "the source's length");
    assert_eq!(before["solver"], "sde");
    assert_eq!(before["timbre_reference"], "library:funk:1");
    let preset = get(a, "/api/preset").await;
    assert_eq!(preset["preset_version"], 1);
    assert_eq!(
        preset["source"],
        serde_json::json!({"kind": "library", "style": "funk", "index": 1})
    );
    assert_eq!(
        preset["references"],
        serde_json::json!({"timbre": {"kind": "library", "style": "funk", "index": 1},
                           "structure": {"kind": "none"}})
    );
    assert_eq!(preset["knobs"]["seed"], 7.0);
    assert_eq!(preset["prompts"]["bpm"], 128.0);
    let path = temp("saved.json");
    std::fs::write(&path, serde_json::to_string_pretty(&preset).unwrap()).unwrap();

    // A new server from a fresh session (8 s, house, defaults) with `--load` that file.
    let mut o = common::server_options("presets", "b");
    let (load, warnings) = demon_live::restore::load_file(&path, &facts()).unwrap();
    assert!(warnings.is_empty());
    o.load = Some(load);
    let b = serve(o, common::session(8.0)).await;
    let after = settled_state(b).await;
    assert_eq!(after, before);
    assert_eq!(get(b, "/api/preset").await, preset);
    std::fs::remove_file(&path).unwrap();
}

/// A 2 s 48 kHz stereo WAV of a tone.
fn tone_wav() -> Vec<u8> {
    let tone: Vec<f32> = (0..2 * 48_000)
        .map(|i| (i as f32 * 0.05).sin() * 0.4)
        .collect();
    let audio = demon_engine::Audio::new(48_000, vec![tone.clone(), tone]).unwrap();
    demon_audio::wav_bytes(&audio, demon_audio::WavFormat::Pcm16, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_becomes_a_reference_and_its_preset_keeps_it_where_it_plays() {
    let a = serve(
        common::server_options("presets", "ref-a"),
        common::session(8.0),
    )
    .await;
    // With `role`, an upload is that reference; the source stays.
    let (code, body) = request(
        a,
        "POST",
        "/api/source?name=take.wav&role=structure",
        "audio/wav",
        &tone_wav(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"source\":\"take.wav\""), "{body}");
    let st = get(a, "/api/state").await;
    assert_eq!(st["structure_reference"], "take.wav");
    assert_eq!(st["timbre_reference"], Value::Null);
    assert_eq!(
        st["source"],
        Value::Null,
        "an upload with a role is not the source"
    );
    // A bad role is refused before anything is decoded.
    let (code, body) = request(
        a,
        "POST",
        "/api/source?name=take.wav&role=melody",
        "audio/wav",
        &tone_wav(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = request(
        a,
        "POST",
        "/api/source?name=voice.wav&role=timbre",
        "audio/wav",
        &tone_wav(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(a, "/api/state").await["timbre_reference"], "voice.wav");

    let preset = get(a, "/api/preset").await;
    assert_eq!(
        preset["references"],
        serde_json::json!({"timbre": {"kind": "upload", "name": "voice.wav"},
                           "structure": {"kind": "upload", "name": "take.wav"}})
    );
    // Loaded where the uploads play: they stay, no warning.
    let (code, body) = post(a, "/api/preset", &preset.to_string()).await;
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("not restorable"), "{body}");
    assert_eq!(get(a, "/api/state").await["timbre_reference"], "voice.wav");
    // Loaded into a server that never had them: the rest loads, each upload is reported.
    let b = serve(
        common::server_options("presets", "ref-b"),
        common::session(8.0),
    )
    .await;
    let (code, body) = post(b, "/api/preset", &preset.to_string()).await;
    assert_eq!(code, 200, "{body}");
    for (field, name) in [("timbre", "voice.wav"), ("structure", "take.wav")] {
        assert!(
            body.contains(&format!(
                "references.{field}: the upload `{name}` is not restorable"
            )),
            "{body}"
        );
    }
    // A preset without references clears them (a preset is the whole state).
    let mut plain = preset.clone();
    plain.as_object_mut().unwrap().remove("references");
    let (code, body) = post(a, "/api/preset", &plain.to_string()).await;
    assert_eq!(code, 200, "{body}");
    let st = get(a, "/api/state").await;
    assert_eq!(
        (&st["timbre_reference"], &st["structure_reference"]),
        (&Value::Null, &Value::Null)
    );
}

/// `analyze?source=FILE` reads the file's own audio: these hooks (like a demon-written WAV,
/// which carries its latent) resolve every name to a latent, which has no audio to analyse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_resolves_to_a_latent_is_analysed_as_it_sounds() {
    let media = temp("analyze-media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("take.wav"), tone_wav()).unwrap();
    let mut o = common::server_options("presets", "analyze");
    o.media_dirs = vec![media.clone()];
    let a = serve(o, common::session(8.0)).await;
    let r = get(a, "/api/analyze?source=take.wav").await;
    assert_eq!(r["duration_seconds"], 2.0, "{r}");
    assert!(r["integrated_lufs"].as_f64().is_some(), "{r}");
    let (code, body) = request(
        a,
        "GET",
        "/api/analyze?source=/etc/passwd",
        "application/json",
        b"",
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains(demon_live::media::REFUSAL), "{body}");
    std::fs::remove_dir_all(&media).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_recording_is_continued_from_its_last_state() {
    let rec = temp("session.jsonl");
    let handle = common::session_with(
        8.0,
        RunOptions {
            realtime: true,
            session_file: Some(rec.clone()),
            ..Default::default()
        },
    );
    let a = serve(common::server_options("presets", "rec-a"), handle.clone()).await;
    set_state(a).await;
    let (code, body) = post(
        a,
        "/api/control",
        r#"{"type":"set_knob","name":"denoise","value":0.55}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let before = settled_state(a).await;
    tokio::task::spawn_blocking(move || handle.stop())
        .await
        .unwrap()
        .unwrap();

    let mut o = common::server_options("presets", "rec-b");
    o.load = Some(demon_live::restore::load_file(&rec, &facts()).unwrap().0);
    let b = serve(o, common::session(8.0)).await;
    assert_eq!(settled_state(b).await, before);
    std::fs::remove_file(&rec).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_preset_is_refused_naming_the_field_and_changes_nothing() {
    let a = serve(
        common::server_options("presets", "bad"),
        common::session(8.0),
    )
    .await;
    set_state(a).await;
    let before = settled_state(a).await;
    let preset = get(a, "/api/preset").await;
    let with = |field: &str, value: Value| {
        let mut p = preset.clone();
        let (outer, inner) = field.split_once('.').unwrap_or((field, ""));
        if inner.is_empty() {
            p[outer] = value;
        } else {
            p[outer][inner] = value;
        }
        // Also a valid change, which must not be applied either.
        p["knobs"]["denoise"] = serde_json::json!(0.9);
        p.to_string()
    };
    let cases = [
        (with("knobs.depth", serde_json::json!(99)), "knobs.depth"),
        (with("knobs.wobble", serde_json::json!(1)), "knobs.wobble"),
        (with("knobs.seed", serde_json::json!("seven")), "knobs.seed"),
        (with("prompts.bpm", serde_json::json!(5000)), "prompts"),
        (
            with("colour", serde_json::json!("red")),
            "unknown field `colour`",
        ),
        (
            with("preset_version", serde_json::json!(7)),
            "preset_version",
        ),
        (
            with(
                "loop_band",
                serde_json::json!({"start_s": 1.0, "end_s": 60.0}),
            ),
            "loop_band",
        ),
        (
            with(
                "source",
                serde_json::json!({"kind": "file", "path": "/etc/passwd"}),
            ),
            "source",
        ),
        (
            with(
                "curves.guidance",
                serde_json::json!({"type": "constant", "value": 99}),
            ),
            "curves.guidance",
        ),
    ];
    for (body, field) in cases {
        let (code, reply) = post(a, "/api/preset", &body).await;
        assert!((400..500).contains(&code), "{field}: {code} {reply}");
        assert!(reply.contains(field), "{field} is not named in {reply}");
        assert_eq!(
            settled_state(a).await,
            before,
            "{field} changed the session"
        );
    }
    let (code, _) = request(
        a,
        "POST",
        "/api/preset",
        "text/plain",
        preset.to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 415, "presets are application/json only");
    let big = format!(
        "{{\"preset_version\":1,\"prompts\":{{\"lyrics\":\"{}\"}}}}",
        "x".repeat(70_000)
    );
    let (code, _) = post(a, "/api/preset", &big).await;
    assert_eq!(code, 413, "the body limit holds");
    assert_eq!(settled_state(a).await, before);

    // An upload has no file: the rest loads, the playing source stays, and the reply says so.
    let mut p = preset.clone();
    p["source"] = serde_json::json!({"kind": "upload", "name": "take.wav"});
    p["knobs"]["denoise"] = serde_json::json!(0.9);
    let (code, reply) = post(a, "/api/preset", &p.to_string()).await;
    assert_eq!(code, 200, "{reply}");
    assert!(reply.contains("not restorable"), "{reply}");
    let after = settled_state(a).await;
    assert_eq!(after["source"], before["source"]);
    assert_eq!(after["targets"]["denoise"], 0.9);
}
