//! Issue 10 item 8, OSC: normalised addresses, clamping with a counter, rejected messages
//! counted, the record, seek, bpm, solver and source addresses, and feedback of changed
//! values to the last sender, against a live sketch session with a real UDP listener.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::{target, wait_for};
use demon_live::control::ControlMessage;
use demon_live::session::SessionHandle;
use demon_server::service::{Origin, Service};
use rosc::{OscMessage, OscPacket, OscType};

/// A service on a live 8 s session with its OSC listener on a free loopback port; and a
/// sender socket that reads feedback.
async fn listen(tag: &str) -> (SessionHandle, Arc<Service>, UdpSocket, SocketAddr) {
    let (handle, svc) = common::live_service("osc", tag).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = sock.local_addr().unwrap();
    tokio::spawn(demon_server::osc::run(svc.clone(), sock));
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (handle, svc, sender, at)
}

fn send(sender: &UdpSocket, to: SocketAddr, addr: &str, args: Vec<OscType>) {
    let p = rosc::encoder::encode(&OscPacket::Message(OscMessage {
        addr: addr.into(),
        args,
    }))
    .unwrap();
    sender.send_to(&p, to).unwrap();
}

/// Every feedback message that arrives within `for_ms`.
async fn feedback(sender: &UdpSocket, for_ms: u64) -> Vec<(String, f32)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = std::time::Instant::now() + Duration::from_millis(for_ms);
    while std::time::Instant::now() < end {
        match sender.recv_from(&mut buf) {
            Ok((n, _)) => match rosc::decoder::decode_udp(&buf[..n]).unwrap().1 {
                OscPacket::Message(m) => match m.args.as_slice() {
                    [OscType::Float(v)] => got.push((m.addr, *v)),
                    other => panic!("feedback carries one float: {other:?}"),
                },
                other => panic!("feedback is one message: {other:?}"),
            },
            Err(_) => tokio::task::yield_now().await,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalised_and_clamped_values_apply_and_come_back_to_the_sender() {
    let (handle, svc, sender, osc) = listen("feedback").await;
    // 0.5 of guidance's 1..10 is 5.5; the sender hears 0.5 back on its own address.
    send(
        &sender,
        osc,
        "/demon/norm/guidance",
        vec![OscType::Float(0.5)],
    );
    wait_for("guidance 5.5", || target(&handle, "guidance") == 5.5).await;
    let got = feedback(&sender, 600).await;
    assert_eq!(got, vec![("/demon/norm/guidance".to_string(), 0.5)]);
    // Beyond the range: clamped to its end (and counted), and the clamped value comes back.
    send(
        &sender,
        osc,
        "/demon/knob/denoise",
        vec![OscType::Float(1.7)],
    );
    wait_for("denoise 1.0", || target(&handle, "denoise") == 1.0).await;
    let got = feedback(&sender, 600).await;
    assert_eq!(got, vec![("/demon/knob/denoise".to_string(), 1.0)]);
    assert_eq!(svc.health().osc_clamped_values, 1);
    assert_eq!(svc.health().osc_rejected_messages, 0);
    // A change from another surface reaches the OSC sender too (its faders follow the UI).
    svc.apply(
        Origin::Rest,
        ControlMessage::SetKnob {
            name: "ode_noise".into(),
            value: 0.25,
        },
    )
    .await
    .unwrap();
    let got = feedback(&sender, 600).await;
    assert_eq!(got, vec![("/demon/knob/ode_noise".to_string(), 0.25)]);
    // Three values in a row for one knob: each tick's change comes back once, the last last.
    for n in [0.1f32, 0.2, 0.3] {
        send(&sender, osc, "/demon/norm/denoise", vec![OscType::Float(n)]);
    }
    wait_for("denoise 0.3", || {
        (target(&handle, "denoise") - 0.3).abs() < 1e-6
    })
    .await;
    let got = feedback(&sender, 600).await;
    assert!(!got.is_empty() && got.len() <= 3, "{got:?}");
    assert!(
        got.iter().all(|(a, _)| a == "/demon/norm/denoise"),
        "{got:?}"
    );
    assert!((got.last().unwrap().1 - 0.3).abs() < 1e-6, "{got:?}");
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_refused_messages_are_counted() {
    let (handle, svc, sender, osc) = listen("rejects").await;
    sender.send_to(b"not osc at all", osc).unwrap();
    send(&sender, osc, "/demon/wobble", vec![OscType::Float(1.0)]);
    // A knob the session does not know: refused by the session.
    send(
        &sender,
        osc,
        "/demon/knob/wobble",
        vec![OscType::Float(1.0)],
    );
    // A file outside the media folders: refused by the service, as on every surface.
    send(
        &sender,
        osc,
        "/demon/source",
        vec![OscType::String("/etc/passwd".into())],
    );
    send(
        &sender,
        osc,
        "/demon/solver",
        vec![OscType::String("rk4".into())],
    );
    wait_for("five rejected messages", || {
        svc.health().osc_rejected_messages == 5
    })
    .await;
    // A good message after them still applies.
    send(
        &sender,
        osc,
        "/demon/solver",
        vec![OscType::String("sde".into())],
    );
    wait_for("the SDE solver", || {
        handle
            .state()
            .is_some_and(|s| s.solver == demon_engine::SolverKind::Sde)
    })
    .await;
    assert_eq!(svc.health().osc_rejected_messages, 5);
    assert_eq!(svc.health().osc_clamped_values, 0);
    assert_eq!(handle.state().unwrap().source, None);
    handle.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_bpm_and_record_addresses() {
    let (handle, svc, sender, osc) = listen("transport").await;
    send(&sender, osc, "/demon/bpm", vec![OscType::Float(1000.0)]);
    wait_for("bpm 400", || {
        handle.state().is_some_and(|s| s.bpm == Some(400.0))
    })
    .await;
    send(&sender, osc, "/demon/seek", vec![OscType::Float(4.0)]);
    wait_for("a seek to 4 s", || {
        handle
            .state()
            .is_some_and(|s| (4.0..5.0).contains(&s.playhead_seconds))
    })
    .await;
    // Past the 8 s song: clamped to its last sample, never refused.
    send(&sender, osc, "/demon/seek", vec![OscType::Float(99.0)]);
    wait_for("two clamped values", || {
        svc.health().osc_clamped_values == 2
    })
    .await;
    send(&sender, osc, "/demon/record", vec![OscType::Int(1)]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    send(&sender, osc, "/demon/record", vec![OscType::Int(0)]);
    let dir = svc.options().recordings_dir.clone();
    wait_for("a finished recording", || {
        std::fs::read_dir(&dir).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.path().extension().is_some_and(|x| x == "wav")
                    && e.metadata().is_ok_and(|m| m.len() > 44)
            })
        })
    })
    .await;
    assert_eq!(svc.health().osc_rejected_messages, 0);
    handle.stop().unwrap();
}
