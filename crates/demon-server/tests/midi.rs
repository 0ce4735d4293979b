//! Issue 10 item 8, MIDI: decoded messages (as the MIDI system's callback hands them over)
//! against a live sketch session: relative encoders, soft takeover that lets go when another
//! surface moves the knob, and notes that make a new seed, toggle a recording or recall a
//! preset. The machine
//! has no MIDI device; `midi::dispatch` is what the device callback calls.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{target, wait_for};
use demon_live::control::ControlMessage;
use demon_live::session::SessionHandle;
use demon_server::midi;
use demon_server::protocol::{CcMode, NoteAction};
use demon_server::service::{Origin, Service};

async fn service(tag: &str) -> (SessionHandle, Arc<Service>) {
    let (handle, svc) = common::live_service("midi", tag).await;
    tokio::spawn(midi::follow_other_surfaces(svc.clone()));
    (handle, svc)
}

/// Send `bytes` as the device callback would, then wait for the next tick to apply it.
async fn midi_in(svc: &Arc<Service>, handle: &SessionHandle, bytes: [u8; 3]) {
    let tick = handle.state().unwrap().tick;
    midi::dispatch(svc, &tokio::runtime::Handle::current(), &bytes);
    wait_for("a tick", || handle.state().unwrap().tick > tick + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_encoder_steps_the_knob_and_follows_other_surfaces() {
    let (handle, svc) = service("relative").await;
    svc.midi_learn(
        Some("guidance"),
        Some(CcMode::RelativeTwosComplement),
        None,
        None,
    )
    .await
    .unwrap();
    midi::dispatch(&svc, &tokio::runtime::Handle::current(), &[0xB0, 16, 1]);
    // Guidance starts at 1; a step is 9/127.
    let step = 9.0 / 127.0;
    midi_in(&svc, &handle, [0xB0, 16, 3]).await;
    assert!((target(&handle, "guidance") - (1.0 + 3.0 * step)).abs() < 1e-9);
    midi_in(&svc, &handle, [0xB0, 16, 127]).await;
    assert!((target(&handle, "guidance") - (1.0 + 2.0 * step)).abs() < 1e-9);
    // The UI sets 6; the next click moves on from 6, not from what MIDI sent last.
    svc.apply(
        Origin::Rest,
        ControlMessage::SetKnob {
            name: "guidance".into(),
            value: 6.0,
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    midi_in(&svc, &handle, [0xB0, 16, 1]).await;
    assert!(
        (target(&handle, "guidance") - (6.0 + step)).abs() < 1e-9,
        "{}",
        target(&handle, "guidance")
    );
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pickup_fader_waits_for_the_knob_after_the_ui_moves_it() {
    let (handle, svc) = service("pickup").await;
    svc.midi_learn(Some("denoise"), None, Some(true), None)
        .await
        .unwrap();
    midi::dispatch(&svc, &tokio::runtime::Handle::current(), &[0xB2, 7, 0]);
    // The session's denoise is 0.7 (89/127 ≈ 0.701): a fader at 10 does nothing.
    midi_in(&svc, &handle, [0xB2, 7, 10]).await;
    assert_eq!(target(&handle, "denoise"), 0.7);
    // Through the knob's value: it follows from there.
    midi_in(&svc, &handle, [0xB2, 7, 100]).await;
    assert_eq!(target(&handle, "denoise"), 100.0 / 127.0);
    midi_in(&svc, &handle, [0xB2, 7, 50]).await;
    assert_eq!(target(&handle, "denoise"), 50.0 / 127.0);
    // The UI sets 0.1: the fader (at 50) no longer moves the knob until it comes down to it.
    svc.apply(
        Origin::Rest,
        ControlMessage::SetKnob {
            name: "denoise".into(),
            value: 0.1,
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    midi_in(&svc, &handle, [0xB2, 7, 60]).await;
    assert_eq!(target(&handle, "denoise"), 0.1);
    midi_in(&svc, &handle, [0xB2, 7, 5]).await;
    assert_eq!(target(&handle, "denoise"), 5.0 / 127.0);
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_make_a_new_seed_and_toggle_a_recording() {
    let (handle, svc) = service("notes").await;
    let rt = tokio::runtime::Handle::current();
    svc.midi_learn(None, None, None, Some(NoteAction::NewSeed))
        .await
        .unwrap();
    midi::dispatch(&svc, &rt, &[0x99, 36, 100]);
    svc.midi_learn(None, None, None, Some(NoteAction::Record))
        .await
        .unwrap();
    midi::dispatch(&svc, &rt, &[0x99, 37, 100]);
    // A knob and an action at once is refused.
    assert!(
        svc.midi_learn(Some("denoise"), None, None, Some(NoteAction::Record))
            .await
            .is_err()
    );
    let seed = target(&handle, "seed");
    midi_in(&svc, &handle, [0x99, 36, 100]).await;
    let new = target(&handle, "seed");
    assert_ne!(new, seed);
    assert!(new >= 0.0 && new <= u32::MAX as f64 && new.fract() == 0.0);
    // Note-off (velocity 0) does nothing.
    midi_in(&svc, &handle, [0x99, 36, 0]).await;
    assert_eq!(target(&handle, "seed"), new);
    // Record: on, then off; the recording is a WAV with audio in it.
    midi::dispatch(&svc, &rt, &[0x99, 37, 100]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    midi::dispatch(&svc, &rt, &[0x99, 37, 100]);
    let dir = svc.options().recordings_dir.clone();
    wait_for("a finished recording", || {
        std::fs::read_dir(&dir).is_ok_and(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "wav"))
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 44 + 4 * 48_000 / 10))
        })
    })
    .await;
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_note_recalls_the_state_it_was_learned_in() {
    let (handle, svc) = service("preset").await;
    let set = |name: &str, value: f64| {
        let svc = svc.clone();
        let name = name.to_string();
        async move {
            svc.apply(Origin::Rest, ControlMessage::SetKnob { name, value })
                .await
                .unwrap()
        }
    };
    // Pad 40 learns one sound, pad 41 another.
    set("denoise", 0.25).await;
    set("guidance", 3.0).await;
    svc.midi_learn(None, None, None, Some(NoteAction::Preset))
        .await
        .unwrap();
    midi::dispatch(&svc, &tokio::runtime::Handle::current(), &[0x90, 40, 100]);
    set("denoise", 0.9).await;
    set("guidance", 7.0).await;
    svc.midi_learn(None, None, None, Some(NoteAction::Preset))
        .await
        .unwrap();
    midi::dispatch(&svc, &tokio::runtime::Handle::current(), &[0x90, 41, 100]);
    // Somewhere else entirely; then the pads bring each sound back, whole.
    set("denoise", 0.5).await;
    set("guidance", 5.0).await;
    midi::dispatch(&svc, &tokio::runtime::Handle::current(), &[0x90, 40, 100]);
    wait_for("pad 40's preset", || target(&handle, "denoise") == 0.25).await;
    assert_eq!(target(&handle, "guidance"), 3.0);
    midi::dispatch(&svc, &tokio::runtime::Handle::current(), &[0x90, 41, 100]);
    wait_for("pad 41's preset", || target(&handle, "denoise") == 0.9).await;
    assert_eq!(target(&handle, "guidance"), 7.0);
    // The map file keeps both presets.
    let saved = demon_server::midi_learn::read_map(&svc.options().midi_map).unwrap();
    assert_eq!(saved.len(), 2, "{saved:?}");
    handle.stop().unwrap();
}
