//! OSC over UDP (docs/protocol.md "OSC"): `/demon/knob/<name> f`, `/demon/prompt s`,
//! `/demon/prompt_b s`, `/demon/blend f`, `/demon/curve/<name> f…`, `/demon/play i`,
//! `/demon/source s` (`none`, `library:STYLE[:N]` or a file in the media folders).
//! Bad packets are counted and reported once; they never stop anything. OSC carries no token:
//! packets from a sender that is neither loopback nor inside `--osc-allow` are dropped before
//! decoding and counted (`/api/health` `osc_dropped_packets`). Bundles nest at most
//! [`MAX_BUNDLE_DEPTH`] levels: the depth is measured without recursion before `rosc` (whose
//! decoder recurses once per level) sees the packet, so no packet can overflow a worker's stack.

use std::sync::Arc;

use demon_engine::CurveSpec;
use demon_live::control::{ControlMessage, SourceSpec};
use rosc::{OscMessage, OscPacket, OscType};

use crate::protocol::{ApiError, ErrorCode};
use crate::service::{Origin, Service};

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

/// The control message an OSC message asks for.
pub fn to_control(m: &OscMessage) -> Result<ControlMessage, ApiError> {
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
    if let Some(name) = addr.strip_prefix("/demon/knob/") {
        return Ok(ControlMessage::SetKnob {
            name: name.to_string(),
            value: one_number()?,
        });
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
        if values.is_empty() {
            return Ok(ControlMessage::SetCurve {
                name: name.to_string(),
                curve: None,
            });
        }
        return Ok(ControlMessage::SetCurve {
            name: name.to_string(),
            curve: Some(CurveSpec::Raw { values }),
        });
    }
    match addr {
        "/demon/prompt" => Ok(ControlMessage::SetPrompt {
            prompt: Some(one_string()?),
            prompt_b: None,
            negative: None,
            bpm: None,
            key: None,
        }),
        "/demon/prompt_b" => Ok(ControlMessage::SetPrompt {
            prompt: None,
            prompt_b: Some(one_string()?),
            negative: None,
            bpm: None,
            key: None,
        }),
        "/demon/blend" => Ok(ControlMessage::SetKnob {
            name: "blend".into(),
            value: one_number()?,
        }),
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
            Ok(ControlMessage::SetSource { source })
        }
        "/demon/play" => Ok(ControlMessage::SetPlaying {
            playing: one_number()? != 0.0,
        }),
        other => Err(ApiError::new(
            ErrorCode::UnknownType,
            format!("unknown OSC address `{other}`"),
        )),
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
/// reported once and never stop anything.
pub async fn run(svc: Arc<Service>, sock: tokio::net::UdpSocket) {
    if let Ok(addr) = sock.local_addr() {
        eprintln!("osc: listening on udp://{addr}");
    }
    let mut buf = vec![0u8; 65_536];
    let mut reported = false;
    let mut report = |what: &dyn std::fmt::Display| {
        if !reported {
            eprintln!("osc: {what}; further problems are ignored silently");
            reported = true;
        }
    };
    loop {
        let n = match sock.recv_from(&mut buf).await {
            Ok((n, sender)) if svc.options().osc_sender_allowed(sender.ip()) => n,
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
                report(&format!("ignoring a packet: {}", e.message));
                continue;
            }
        };
        for m in msgs {
            let result = match to_control(&m) {
                Ok(c) => svc.apply(Origin::Osc, c).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                report(&e);
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
                mapped += msgs.iter().filter(|m| to_control(m).is_ok()).count();
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
}
