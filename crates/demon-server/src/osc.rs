//! OSC over UDP (docs/protocol.md "OSC"): `/demon/knob/<name> f`, `/demon/prompt s`,
//! `/demon/prompt_b s`, `/demon/blend f`, `/demon/curve/<name> f…`, `/demon/play i`.
//! Bad packets are counted and reported once; they never stop anything.

use std::sync::Arc;

use demon_engine::CurveSpec;
use demon_live::control::ControlMessage;
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
        "/demon/play" => Ok(ControlMessage::SetPlaying {
            playing: one_number()? != 0.0,
        }),
        other => Err(ApiError::new(
            ErrorCode::UnknownType,
            format!("unknown OSC address `{other}`"),
        )),
    }
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
            Ok((n, _)) => n,
            Err(_) => continue,
        };
        let mut msgs = Vec::new();
        match rosc::decoder::decode_udp(&buf[..n]) {
            Ok((_, p)) => flatten(p, &mut msgs),
            Err(e) => {
                report(&format!("ignoring a malformed packet ({e})"));
                continue;
            }
        }
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
