//! OSC over UDP (docs/protocol.md "OSC"): `/demon/knob/<name> f` (in the knob's own units),
//! `/demon/norm/<name> f` (0..1 over the knob's range), `/demon/prompt s`, `/demon/prompt_b s`,
//! `/demon/blend f`, `/demon/bpm f`, `/demon/seek f` (seconds), `/demon/solver s`,
//! `/demon/curve/<name> f…`, `/demon/play i`, `/demon/record i`, `/demon/source s` (`none`,
//! `library:STYLE[:N]` or a file in the media folders, resolved by the service like every other
//! surface's).
//!
//! A number outside its range is clamped into it (and counted, `osc_clamped_values`); a packet
//! or message the server cannot use is counted (`osc_rejected_messages`) and reported once;
//! neither ever stops anything. After a knob changes (from any surface) its new value is sent
//! back to the last OSC sender on the address that sender used for it, so TouchOSC faders
//! follow: the runner's coalesced `params` event drives it, so at most once per tick per knob,
//! and a full socket drops the packet instead of waiting.
//!
//! OSC carries no token: packets from a sender that is neither loopback nor inside
//! `--osc-allow` are dropped before decoding and counted (`/api/health` `osc_dropped_packets`).
//! Bundles nest at most [`MAX_BUNDLE_DEPTH`] levels: the depth is measured without recursion
//! before `rosc` (whose decoder recurses once per level) sees the packet, so no packet can
//! overflow a worker's stack.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use demon_engine::{CurveSpec, SolverKind};
use demon_live::bus::Event;
use demon_live::control::{ControlMessage, SourceSpec};
use demon_live::controls::{LORA_PREFIX, LORA_RANGE, knob_spec};
use rosc::{OscMessage, OscPacket, OscType};

use crate::protocol::{ApiError, ErrorCode};
use crate::service::{Origin, Service};

/// The tempo range a prompt accepts (`demon_engine::Prompt::validate`; a test keeps the two
/// equal).
pub const BPM_RANGE: (f64, f64) = (20.0, 400.0);

fn number(a: &OscType) -> Option<f64> {
    match a {
        OscType::Float(f) => Some(*f as f64),
        OscType::Double(d) => Some(*d),
        OscType::Int(i) => Some(*i as f64),
        OscType::Long(l) => Some(*l as f64),
        OscType::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn bad(msg: String) -> ApiError {
    ApiError::new(ErrorCode::BadMessage, msg)
}

/// The range of a knob of the catalog or a LoRA strength (`lora:<id>`).
pub fn knob_range(name: &str) -> Option<(f64, f64)> {
    if let Some(k) = knob_spec(name) {
        return Some((k.min, k.max));
    }
    name.strip_prefix(LORA_PREFIX)
        .is_some_and(|id| !id.is_empty())
        .then_some(LORA_RANGE)
}

/// `value` clamped into `[lo, hi]`, and whether it had to be. NaN has no place in a range and
/// is refused.
fn clamp(addr: &str, value: f64, lo: f64, hi: f64) -> Result<(f64, bool), ApiError> {
    if value.is_nan() {
        return Err(bad(format!("{addr}: NaN is not a value")));
    }
    let c = value.clamp(lo, hi);
    Ok((c, c != value))
}

/// What an OSC message asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum OscCommand {
    /// A control for the session.
    Control(ControlMessage),
    /// `/demon/record i`: start (non-zero) or stop (0) a recording.
    Record(bool),
    /// `/demon/lora/rescan`: scan the LoRA folders again.
    RescanLoras,
}

/// An OSC message, mapped.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapped {
    pub command: OscCommand,
    /// Its number was outside the range and was clamped into it.
    pub clamped: bool,
    /// `(knob, address)`: the knob this message sets and the address its sender used for it,
    /// where feedback of the knob's value goes.
    pub feedback: Option<(String, String)>,
}

/// What mapping needs to know about the session.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OscContext {
    /// The last time a seek may reach (one sample before the song's end).
    pub max_seek_seconds: f64,
}

impl OscContext {
    /// A song of `song_seconds` at `sample_rate`.
    pub fn new(song_seconds: f64, sample_rate: u32) -> Self {
        Self {
            max_seek_seconds: (song_seconds - 1.0 / sample_rate.max(1) as f64).max(0.0),
        }
    }
}

/// The control message an OSC message asks for, without a session to clamp seeks to (kept for
/// callers that only apply controls; `/demon/record` is refused here).
pub fn to_control(m: &OscMessage) -> Result<ControlMessage, ApiError> {
    let ctx = OscContext {
        max_seek_seconds: f64::INFINITY,
    };
    match map(m, &ctx)?.command {
        OscCommand::Control(c) => Ok(c),
        OscCommand::Record(_) | OscCommand::RescanLoras => {
            Err(bad(format!("{}: not a control", m.addr)))
        }
    }
}

/// Map one OSC message.
pub fn map(m: &OscMessage, ctx: &OscContext) -> Result<Mapped, ApiError> {
    let one_number = || -> Result<f64, ApiError> {
        match m.args.as_slice() {
            [a] => {
                number(a).ok_or_else(|| bad(format!("{}: the argument must be a number", m.addr)))
            }
            _ => Err(bad(format!(
                "{}: expects one number, got {} arguments",
                m.addr,
                m.args.len()
            ))),
        }
    };
    let one_string = || -> Result<String, ApiError> {
        match m.args.as_slice() {
            [OscType::String(s)] => Ok(s.clone()),
            _ => Err(bad(format!("{}: expects one string", m.addr))),
        }
    };
    let addr = m.addr.as_str();
    let plain = |c: ControlMessage| Mapped {
        command: OscCommand::Control(c),
        clamped: false,
        feedback: None,
    };
    let knob = |name: &str, value: f64, clamped: bool| Mapped {
        command: OscCommand::Control(ControlMessage::SetKnob {
            name: name.to_string(),
            value,
        }),
        clamped,
        feedback: Some((name.to_string(), addr.to_string())),
    };
    if let Some(name) = addr.strip_prefix("/demon/knob/") {
        let v = one_number()?;
        // A knob the server does not know is refused by the session, with its name.
        let Some((lo, hi)) = knob_range(name) else {
            return Ok(plain(ControlMessage::SetKnob {
                name: name.to_string(),
                value: v,
            }));
        };
        let (v, clamped) = clamp(addr, v, lo, hi)?;
        return Ok(knob(name, v, clamped));
    }
    if let Some(name) = addr.strip_prefix("/demon/norm/") {
        let (lo, hi) = knob_range(name).ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownKnob,
                format!("{addr}: unknown knob `{name}`"),
            )
        })?;
        let (n, clamped) = clamp(addr, one_number()?, 0.0, 1.0)?;
        return Ok(knob(name, lo + n * (hi - lo), clamped));
    }
    if let Some(name) = addr.strip_prefix("/demon/curve/") {
        let values = m
            .args
            .iter()
            .map(|a| {
                number(a)
                    .map(|v| v as f32)
                    .ok_or_else(|| bad(format!("{addr}: every argument must be a number")))
            })
            .collect::<Result<Vec<f32>, ApiError>>()?;
        let curve = (!values.is_empty()).then_some(CurveSpec::Raw { values });
        return Ok(plain(ControlMessage::SetCurve {
            name: name.to_string(),
            curve,
        }));
    }
    let prompt = |prompt: Option<String>, prompt_b: Option<String>, bpm: Option<f32>| {
        ControlMessage::SetPrompt {
            prompt,
            prompt_b,
            negative: None,
            bpm,
            key: None,
            lyrics: None,
            time_signature: None,
            language: None,
            task: None,
        }
    };
    match addr {
        "/demon/prompt" => Ok(plain(prompt(Some(one_string()?), None, None))),
        "/demon/prompt_b" => Ok(plain(prompt(None, Some(one_string()?), None))),
        "/demon/blend" => {
            let (v, clamped) = clamp(addr, one_number()?, 0.0, 1.0)?;
            Ok(knob("blend", v, clamped))
        }
        "/demon/bpm" => {
            let (v, clamped) = clamp(addr, one_number()?, BPM_RANGE.0, BPM_RANGE.1)?;
            Ok(Mapped {
                clamped,
                ..plain(prompt(None, None, Some(v as f32)))
            })
        }
        "/demon/seek" => {
            let (seconds, clamped) = clamp(addr, one_number()?, 0.0, ctx.max_seek_seconds)?;
            Ok(Mapped {
                clamped,
                ..plain(ControlMessage::Seek { seconds })
            })
        }
        "/demon/solver" => {
            let solver: SolverKind = one_string()?
                .parse()
                .map_err(|e: demon_engine::EngineError| bad(format!("{addr}: {e}")))?;
            Ok(plain(ControlMessage::SetSolver { solver }))
        }
        "/demon/source" => {
            let name = one_string()?;
            let source = if name == "none" {
                SourceSpec::None
            } else if let Some(lib) = name.strip_prefix("library:") {
                let (style, index) = lib.split_once(':').unwrap_or((lib, "0"));
                SourceSpec::Library {
                    style: style.to_string(),
                    index: index.parse().map_err(|_| {
                        bad(format!("{addr}: `{index}` is not a library song number"))
                    })?,
                }
            } else {
                SourceSpec::File { path: name }
            };
            Ok(plain(ControlMessage::SetSource { source }))
        }
        "/demon/play" => Ok(plain(ControlMessage::SetPlaying {
            playing: one_number()? != 0.0,
        })),
        "/demon/record" => Ok(Mapped {
            command: OscCommand::Record(one_number()? != 0.0),
            clamped: false,
            feedback: None,
        }),
        "/demon/lora/rescan" => Ok(Mapped {
            command: OscCommand::RescanLoras,
            clamped: false,
            feedback: None,
        }),
        other => Err(ApiError::new(
            ErrorCode::UnknownType,
            format!("unknown OSC address `{other}`"),
        )),
    }
}

/// The feedback packet for a knob's new `value` on `address` (normalised on `/demon/norm/`).
pub fn feedback_packet(address: &str, knob: &str, value: f64) -> Option<Vec<u8>> {
    let value = if address.starts_with("/demon/norm/") {
        let (lo, hi) = knob_range(knob)?;
        if hi > lo {
            (value - lo) / (hi - lo)
        } else {
            0.0
        }
    } else {
        value
    };
    rosc::encoder::encode(&OscPacket::Message(OscMessage {
        addr: address.to_string(),
        args: vec![OscType::Float(value as f32)],
    }))
    .ok()
}

/// Where feedback goes: the last sender, and the address it last used for each knob.
#[derive(Default)]
struct Peer {
    sender: Mutex<Option<SocketAddr>>,
    /// knob → address; only knobs of the catalog or adapters (the mapping checked them), so it
    /// stays as small as the catalog.
    addresses: Mutex<BTreeMap<String, String>>,
}

impl Peer {
    fn sender(&self) -> Option<SocketAddr> {
        *self.sender.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn address(&self, knob: &str) -> String {
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(knob)
            .cloned()
            .unwrap_or_else(|| format!("/demon/knob/{knob}"))
    }

    fn heard(&self, sender: SocketAddr, feedback: Option<(String, String)>) {
        *self.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        if let Some((knob, address)) = feedback {
            self.addresses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(knob, address);
        }
    }
}

/// Send each knob change (the runner's `params` events, at most one per tick) to the last
/// sender. The runner never waits for this task (the bus coalesces `params`), and this task
/// never waits for the network (`try_send_to`: a full socket buffer drops the packet).
async fn feedback(svc: Arc<Service>, sock: Arc<tokio::net::UdpSocket>, peer: Arc<Peer>) {
    let mut sent: BTreeMap<String, f64> = svc.state().map(|s| s.targets).unwrap_or_default();
    loop {
        let sub = svc.subscribe();
        while let Ok(event) = sub.recv().await {
            let Event::Params { target, .. } = event else {
                continue;
            };
            let to = peer.sender();
            for (knob, value) in target {
                if sent.get(&knob) == Some(&value) {
                    continue;
                }
                if let Some(to) = to
                    && let Some(p) = feedback_packet(&peer.address(&knob), &knob, value)
                {
                    let _ = sock.try_send_to(&p, to);
                }
                sent.insert(knob, value);
            }
        }
        // The bus closed this subscriber (the session stopped, or it fell behind on control
        // events): wait a moment and listen again.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// How deep bundles may nest. Real senders nest one or two levels; the limit only has to keep
/// the recursive decoder far from a worker's stack size (2 000 levels overflowed 2 MiB).
pub const MAX_BUNDLE_DEPTH: usize = 16;

const BUNDLE_TAG: &[u8; 8] = b"#bundle\0";

/// The deepest bundle nesting in a packet, measured with an explicit stack (no recursion), and
/// stopping as soon as it passes `limit`. Malformed tails end the scan: the decoder refuses them.
/// A bundle is `#bundle\0`, an 8-byte time tag, then elements of `[size: u32 BE][bytes]`.
pub fn bundle_depth(packet: &[u8], limit: usize) -> usize {
    if !packet.starts_with(BUNDLE_TAG) {
        return 0;
    }
    // The unread elements of each open bundle, innermost last.
    let mut open: Vec<&[u8]> = vec![packet.get(16..).unwrap_or_default()];
    let mut deepest = 1;
    while let Some(rest) = open.last_mut() {
        if rest.len() < 4 {
            open.pop();
            continue;
        }
        let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(element) = rest.get(4..4 + size) else {
            open.pop();
            continue;
        };
        *rest = &rest[4 + size..];
        if element.starts_with(BUNDLE_TAG) {
            open.push(element.get(16..).unwrap_or_default());
            deepest = deepest.max(open.len());
            if deepest > limit {
                return deepest;
            }
        }
    }
    deepest
}

/// Decode one UDP packet into its messages, refusing bundles nested deeper than
/// [`MAX_BUNDLE_DEPTH`].
pub fn decode(packet: &[u8]) -> Result<Vec<OscMessage>, ApiError> {
    let depth = bundle_depth(packet, MAX_BUNDLE_DEPTH);
    if depth > MAX_BUNDLE_DEPTH {
        return Err(bad(format!(
            "bundles nested more than {MAX_BUNDLE_DEPTH} levels deep"
        )));
    }
    let (_, p) =
        rosc::decoder::decode_udp(packet).map_err(|e| bad(format!("a malformed packet ({e})")))?;
    let mut msgs = Vec::new();
    flatten(p, &mut msgs);
    Ok(msgs)
}

fn flatten(p: OscPacket, out: &mut Vec<OscMessage>) {
    match p {
        OscPacket::Message(m) => out.push(m),
        OscPacket::Bundle(b) => b.content.into_iter().for_each(|p| flatten(p, out)),
    }
}

/// Listen until the socket fails. Every message becomes a service call; bad ones are
/// counted, reported once, and never stop anything.
pub async fn run(svc: Arc<Service>, sock: tokio::net::UdpSocket) {
    if let Ok(addr) = sock.local_addr() {
        eprintln!("osc: listening on udp://{addr}");
    }
    let sock = Arc::new(sock);
    let peer = Arc::new(Peer::default());
    tokio::spawn(feedback(svc.clone(), sock.clone(), peer.clone()));
    let mut buf = vec![0u8; 65_536];
    let mut reported = false;
    let mut report = |what: &dyn std::fmt::Display| {
        if !reported {
            eprintln!("osc: {what}; further problems are counted in /api/health");
            reported = true;
        }
    };
    loop {
        let (n, sender) = match sock.recv_from(&mut buf).await {
            Ok((n, sender)) if svc.options().osc_sender_allowed(sender.ip()) => (n, sender),
            Ok((_, sender)) => {
                svc.count_osc_dropped();
                report(&format!(
                    "dropping packets from {sender}, which is outside --osc-allow"
                ));
                continue;
            }
            Err(_) => continue,
        };
        let msgs = match decode(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                svc.count_osc_rejected();
                report(&format!("ignoring a packet: {}", e.message));
                continue;
            }
        };
        let ctx = svc
            .state()
            .map(|s| OscContext::new(s.song_seconds, svc.sample_rate()))
            .unwrap_or(OscContext {
                max_seek_seconds: f64::INFINITY,
            });
        for m in msgs {
            let result = match map(&m, &ctx) {
                Ok(mapped) => {
                    if mapped.clamped {
                        svc.count_osc_clamped();
                    }
                    // Before applying: the change's feedback may be on its way before the
                    // apply's answer is.
                    peer.heard(sender, mapped.feedback);
                    match mapped.command {
                        OscCommand::Control(c) => svc.apply(Origin::Osc, c).await.map(|_| ()),
                        OscCommand::Record(true) => svc.start_recording().await.map(|_| ()),
                        OscCommand::Record(false) => svc.stop_recording().await.map(|_| ()),
                        OscCommand::RescanLoras => svc.rescan_loras().await.map(|_| ()),
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                svc.count_osc_rejected();
                report(&format!("{}: {e}", m.addr));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(addr: &str, args: Vec<OscType>) -> OscMessage {
        OscMessage {
            addr: addr.into(),
            args,
        }
    }

    /// A packet of `levels` bundles, each holding the next; the innermost holds one message.
    pub(crate) fn nested_bundles(levels: usize) -> Vec<u8> {
        let mut p = rosc::encoder::encode(&OscPacket::Message(msg(
            "/demon/knob/denoise",
            vec![OscType::Float(0.5)],
        )))
        .unwrap();
        for _ in 0..levels {
            let mut b = BUNDLE_TAG.to_vec();
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
            b.extend_from_slice(&(p.len() as u32).to_be_bytes());
            b.extend_from_slice(&p);
            p = b;
        }
        p
    }

    #[test]
    fn bundle_depth_is_measured_and_deep_packets_are_refused() {
        assert_eq!(bundle_depth(&nested_bundles(0), 16), 0);
        assert_eq!(bundle_depth(&nested_bundles(1), 16), 1);
        assert_eq!(bundle_depth(&nested_bundles(16), 16), 16);
        // The scan stops just past the limit.
        assert_eq!(bundle_depth(&nested_bundles(10_000), 16), 17);
        assert_eq!(decode(&nested_bundles(16)).unwrap().len(), 1);
        for levels in [17, 2_200, 10_000] {
            let e = decode(&nested_bundles(levels)).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadMessage);
            assert!(e.message.contains("nested more than 16"), "{}", e.message);
        }
        // Truncated and lying sizes end the scan instead of reading out of bounds.
        let mut p = nested_bundles(3);
        p.truncate(30);
        assert!(bundle_depth(&p, 16) <= 3);
        // (rosc keeps the complete elements of a cut bundle: here none.)
        assert!(decode(&p).map_or(true, |m| m.is_empty()));
        let mut lying = BUNDLE_TAG.to_vec();
        lying.extend_from_slice(&[0; 8]);
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(bundle_depth(&lying, 16), 1);
        assert!(decode(&lying).map_or(true, |m| m.is_empty()));
    }

    /// xorshift64*: a seeded stream for the fuzz tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    /// Seeded fuzz: valid packets, bundles and deep nests with random bytes flipped, cut or
    /// appended. Decoding and mapping never panic and never recurse past the depth limit.
    /// `DEMON_FUZZ_PACKETS` raises the count (default 20 000).
    #[test]
    fn mutated_packets_never_panic() {
        let n: usize = std::env::var("DEMON_FUZZ_PACKETS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000);
        let seeds: Vec<Vec<u8>> = vec![
            rosc::encoder::encode(&OscPacket::Message(msg(
                "/demon/knob/denoise",
                vec![OscType::Float(0.5)],
            )))
            .unwrap(),
            rosc::encoder::encode(&OscPacket::Message(msg(
                "/demon/curve/ode_noise",
                vec![OscType::Float(0.1), OscType::Double(0.2), OscType::Int(1)],
            )))
            .unwrap(),
            rosc::encoder::encode(&OscPacket::Message(msg(
                "/demon/source",
                vec![OscType::String("library:funk:1".into())],
            )))
            .unwrap(),
            nested_bundles(3),
            nested_bundles(20),
        ];
        let mut rng = Rng(0x05c_f022);
        let (mut decoded, mut mapped) = (0usize, 0usize);
        for _ in 0..n {
            let mut p = seeds[rng.next() as usize % seeds.len()].clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = rng.next() as usize % p.len().max(1);
                match rng.next() % 4 {
                    0 if !p.is_empty() => p[i] ^= 1 << (rng.next() % 8),
                    1 if !p.is_empty() => p[i] = rng.next() as u8,
                    2 => p.truncate(i),
                    _ => p.extend((0..rng.next() % 16).map(|_| rng.next() as u8)),
                }
            }
            if let Ok(msgs) = decode(&p) {
                decoded += 1;
                mapped += msgs
                    .iter()
                    .filter(|m| map(m, &OscContext::new(10.0, 48_000)).is_ok())
                    .count();
            }
        }
        // The fuzz reaches both sides: some packets still decode and map, most do not.
        assert!(decoded > n / 20 && decoded < n, "{decoded} of {n} decoded");
        assert!(mapped > 0, "{mapped} mapped");
    }

    #[test]
    fn maps_addresses() {
        assert_eq!(
            to_control(&msg("/demon/knob/denoise", vec![OscType::Float(0.5)])),
            Ok(ControlMessage::SetKnob {
                name: "denoise".into(),
                value: 0.5
            })
        );
        assert_eq!(
            to_control(&msg("/demon/blend", vec![OscType::Int(1)])),
            Ok(ControlMessage::SetKnob {
                name: "blend".into(),
                value: 1.0
            })
        );
        assert!(matches!(
            to_control(&msg(
                "/demon/prompt",
                vec![OscType::String("techno".into())]
            )),
            Ok(ControlMessage::SetPrompt {
                prompt: Some(_),
                ..
            })
        ));
        assert!(matches!(
            to_control(&msg(
                "/demon/curve/ode_noise",
                vec![OscType::Float(0.0), OscType::Float(0.5)]
            )),
            Ok(ControlMessage::SetCurve {
                curve: Some(CurveSpec::Raw { .. }),
                ..
            })
        ));
        assert!(to_control(&msg("/demon/knob/denoise", vec![])).is_err());
        assert!(to_control(&msg("/demon/prompt", vec![OscType::Float(1.0)])).is_err());
        assert!(
            to_control(&msg("/elsewhere", vec![]))
                .unwrap_err()
                .message
                .contains("unknown OSC address")
        );
    }

    fn mapped(addr: &str, args: Vec<OscType>) -> Mapped {
        map(&msg(addr, args), &OscContext::new(10.0, 48_000)).unwrap()
    }

    fn knob_value(m: &Mapped) -> f64 {
        match &m.command {
            OscCommand::Control(ControlMessage::SetKnob { value, .. }) => *value,
            other => panic!("not a knob: {other:?}"),
        }
    }

    #[test]
    fn normalised_addresses_map_onto_each_knobs_range() {
        // denoise 0..1, guidance 1..10, apg_momentum -1..1, steps 1..16, lora 0..2.
        for (knob, n, want) in [
            ("denoise", 0.25, 0.25),
            ("guidance", 0.5, 5.5),
            ("guidance", 0.0, 1.0),
            ("apg_momentum", 0.75, 0.5),
            ("steps", 1.0, 16.0),
            ("lora:vocals", 0.5, 1.0),
        ] {
            let m = mapped(&format!("/demon/norm/{knob}"), vec![OscType::Float(n)]);
            assert_eq!(knob_value(&m), want, "{knob} at {n}");
            assert!(!m.clamped);
            assert_eq!(
                m.feedback,
                Some((knob.to_string(), format!("/demon/norm/{knob}")))
            );
        }
        // Out of 0..1: clamped to the range's ends, and said so.
        let m = mapped("/demon/norm/guidance", vec![OscType::Float(1.5)]);
        assert_eq!((knob_value(&m), m.clamped), (10.0, true));
        let m = mapped("/demon/norm/guidance", vec![OscType::Int(-3)]);
        assert_eq!((knob_value(&m), m.clamped), (1.0, true));
        // A knob without a range cannot be normalised.
        let e = map(
            &msg("/demon/norm/wobble", vec![OscType::Float(0.5)]),
            &OscContext::new(10.0, 48_000),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownKnob);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_dropped() {
        let m = mapped("/demon/knob/denoise", vec![OscType::Float(1.7)]);
        assert_eq!((knob_value(&m), m.clamped), (1.0, true));
        let m = mapped("/demon/knob/guidance", vec![OscType::Double(-4.0)]);
        assert_eq!((knob_value(&m), m.clamped), (1.0, true));
        let m = mapped("/demon/knob/guidance", vec![OscType::Double(4.0)]);
        assert_eq!((knob_value(&m), m.clamped), (4.0, false));
        let m = mapped("/demon/blend", vec![OscType::Float(2.0)]);
        assert_eq!((knob_value(&m), m.clamped), (1.0, true));
        assert_eq!(
            m.feedback,
            Some(("blend".to_string(), "/demon/blend".to_string()))
        );
        let m = mapped("/demon/bpm", vec![OscType::Int(900)]);
        assert!(m.clamped);
        assert!(matches!(
            m.command,
            OscCommand::Control(ControlMessage::SetPrompt { bpm: Some(b), prompt: None, .. }) if b == 400.0
        ));
        let m = mapped("/demon/bpm", vec![OscType::Float(128.0)]);
        assert!(!m.clamped);
        // Seeks stay inside the 10 s song: the last reachable time is one sample before its end.
        let m = mapped("/demon/seek", vec![OscType::Float(25.0)]);
        assert!(m.clamped);
        assert_eq!(
            m.command,
            OscCommand::Control(ControlMessage::Seek {
                seconds: 10.0 - 1.0 / 48_000.0
            })
        );
        let m = mapped("/demon/seek", vec![OscType::Float(-1.0)]);
        assert_eq!(
            (m.command, m.clamped),
            (
                OscCommand::Control(ControlMessage::Seek { seconds: 0.0 }),
                true
            )
        );
        // NaN is no value to clamp; an unknown knob goes to the session, which names it.
        assert!(
            map(
                &msg("/demon/knob/denoise", vec![OscType::Float(f32::NAN)]),
                &OscContext::new(10.0, 48_000)
            )
            .is_err()
        );
        let m = mapped("/demon/knob/wobble", vec![OscType::Float(9.0)]);
        assert_eq!((knob_value(&m), m.clamped, m.feedback), (9.0, false, None));
    }

    #[test]
    fn bpm_range_is_the_prompts() {
        let prompt = |bpm: f64| demon_engine::Prompt {
            bpm: Some(bpm as f32),
            ..Default::default()
        };
        assert!(prompt(BPM_RANGE.0).validate().is_ok());
        assert!(prompt(BPM_RANGE.1).validate().is_ok());
        assert!(prompt(BPM_RANGE.0 - 0.5).validate().is_err());
        assert!(prompt(BPM_RANGE.1 + 0.5).validate().is_err());
    }

    #[test]
    fn solver_record_and_source_addresses() {
        assert_eq!(
            mapped("/demon/solver", vec![OscType::String("sde".into())]).command,
            OscCommand::Control(ControlMessage::SetSolver {
                solver: SolverKind::Sde
            })
        );
        let e = map(
            &msg("/demon/solver", vec![OscType::String("rk4".into())]),
            &OscContext::new(10.0, 48_000),
        )
        .unwrap_err();
        assert!(e.message.contains("unknown solver `rk4`"), "{}", e.message);
        assert_eq!(
            mapped("/demon/record", vec![OscType::Int(1)]).command,
            OscCommand::Record(true)
        );
        assert_eq!(
            mapped("/demon/record", vec![OscType::Float(0.0)]).command,
            OscCommand::Record(false)
        );
        assert_eq!(
            mapped("/demon/lora/rescan", vec![]).command,
            OscCommand::RescanLoras
        );
        assert_eq!(
            mapped("/demon/source", vec![OscType::String("loops/a.wav".into())]).command,
            OscCommand::Control(ControlMessage::SetSource {
                source: SourceSpec::File {
                    path: "loops/a.wav".into()
                }
            })
        );
    }

    #[test]
    fn feedback_goes_back_on_the_senders_address() {
        let decode_one = |p: Vec<u8>| match rosc::decoder::decode_udp(&p).unwrap().1 {
            OscPacket::Message(m) => m,
            other => panic!("{other:?}"),
        };
        let m = decode_one(feedback_packet("/demon/norm/guidance", "guidance", 5.5).unwrap());
        assert_eq!(m.addr, "/demon/norm/guidance");
        assert_eq!(m.args, vec![OscType::Float(0.5)]);
        let m = decode_one(feedback_packet("/demon/knob/guidance", "guidance", 5.5).unwrap());
        assert_eq!(m.args, vec![OscType::Float(5.5)]);
        let peer = Peer::default();
        assert_eq!(peer.address("denoise"), "/demon/knob/denoise");
        let from: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        peer.heard(from, Some(("denoise".into(), "/demon/norm/denoise".into())));
        assert_eq!(peer.address("denoise"), "/demon/norm/denoise");
        assert_eq!(peer.sender(), Some(from));
    }
}
