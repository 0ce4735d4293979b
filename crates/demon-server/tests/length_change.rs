//! Every change of song length reaches every client (issue 10 item 3): with two WebSocket
//! clients connected, an upload of a 6.4 s file makes both receive a full-buffer frame of the
//! new length, and the slices after it patch that loop.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Page;
use demon_live::SessionError;
use demon_server::protocol::FrameKind;
use demon_server::{Hooks, ServerOptions};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const RATE: usize = 48_000;

async fn serve() -> (SocketAddr, demon_live::session::SessionHandle) {
    let handle = common::session(8.0);
    let mut opts = ServerOptions::loopback(0);
    opts.osc_bind = None;
    opts.midi = false;
    opts.midi_map =
        std::env::temp_dir().join(format!("demon-midi-length-{}.json", std::process::id()));
    opts.recordings_dir =
        std::env::temp_dir().join(format!("demon-rec-length-{}", std::process::id()));
    let hooks = Hooks {
        resolve_source: Arc::new(|spec: &str| {
            Err(SessionError::bad_source(spec, "only uploads in this test"))
        }),
        library: Vec::new(),
        render_offline: Arc::new(|_| {
            Err(SessionError::bad_value("render_offline", "not in tests"))
        }),
    };
    let addr = demon_server::serve(opts, handle.clone(), hooks, std::future::pending())
        .await
        .unwrap();
    (addr, handle)
}

/// `seconds` of a 220 Hz tone, 48 kHz stereo, as WAV bytes.
fn wav(seconds: f64) -> Vec<u8> {
    let n = (seconds * RATE as f64).round() as usize;
    let tone: Vec<f32> = (0..n)
        .map(|i| (i as f32 * 220.0 * std::f32::consts::TAU / RATE as f32).sin() * 0.3)
        .collect();
    let audio = demon_engine::Audio::new(RATE as u32, vec![tone.clone(), tone]).unwrap();
    demon_audio::wav_bytes(&audio, demon_audio::WavFormat::Pcm16, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_song_length_reaches_every_client_as_a_full_buffer() {
    let (addr, handle) = serve().await;
    let mut a = Page::open(addr, "").await;
    let mut b = Page::open(addr, "").await;
    for page in [&a, &b] {
        assert_eq!(page.ready["samples"], 8 * RATE);
        assert_eq!(page.loop_audio[0].len(), 8 * RATE);
    }

    a.ws.send(Message::Text(
        json!({"id": 1, "type": "upload", "name": "short.wav"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    a.ws.send(Message::Binary(wav(6.4).into())).await.unwrap();

    let new_len = (6.4 * RATE as f64).round() as usize;
    for (name, page) in [("a", &mut a), ("b", &mut b)] {
        // Deltas of the old loop may still be on their way; then the full frame of the new one.
        let mut frames = 0;
        while page.loop_audio[0].len() != new_len {
            page.next_binary().await;
            frames += 1;
            assert!(
                frames < 500,
                "client {name}: no full frame of the new length"
            );
        }
        // The slices after it patch the new loop, and keep the copy equal to the server's.
        let mut deltas = 0;
        while deltas < 5 {
            if page.next_binary().await == FrameKind::Delta {
                deltas += 1;
            }
            assert_eq!(page.loop_audio[0].len(), new_len, "client {name}");
        }
    }
    let st = handle.state().unwrap();
    assert_eq!(st.source.as_deref(), Some("short.wav"));
    assert!((st.song_seconds - 6.4).abs() < 1e-9, "{}", st.song_seconds);
    let (_, server) = tokio::task::spawn_blocking({
        let h = handle.clone();
        move || h.loop_audio(Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap();
    let server = server.to_planar();
    assert_eq!(server[0].len(), new_len);
    for (name, page) in [("a", &a), ("b", &b)] {
        let agree = page.loop_audio[0]
            .iter()
            .zip(&server[0])
            .filter(|(x, y)| (*x - *y).abs() < 2e-3)
            .count();
        assert!(
            agree * 10 >= new_len * 9,
            "client {name}'s copy agrees with the server's loop on {agree}/{new_len} samples"
        );
    }
    handle.stop().unwrap();
}
