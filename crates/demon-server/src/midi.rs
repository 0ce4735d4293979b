//! Hardware MIDI input: every MIDI input port's control changes and notes, mapped by MIDI learn
//! (`midi_learn.rs`) to knobs and actions (a new seed, a recording, a preset). MIDI is
//! optional at build (the `midi` feature) and at run time: a machine without a MIDI system
//! says so once. What a decoded message does ([`dispatch`]) is the same with or without the
//! feature, so it is tested without hardware.

use std::sync::Arc;

use demon_live::bus::Event;
use demon_live::control::ControlMessage;

use crate::protocol::NoteAction;
use crate::service::{Origin, Service};

/// A decoded MIDI message: apply its control change or note. Never waits: the callback runs
/// on the MIDI system's thread, so controls are handed over without waiting (a full queue
/// drops one, like a missed CC) and a recording toggle runs on `runtime`.
pub fn dispatch(svc: &Arc<Service>, runtime: &tokio::runtime::Handle, msg: &[u8]) {
    match *msg {
        [status, cc, value] if status & 0xF0 == 0xB0 => {
            let channel = status & 0x0F;
            let current = |knob: &str| svc.state().ok()?.targets.get(knob).copied();
            let knob = svc.midi().cc_knob(channel, cc);
            let now = knob.as_deref().and_then(current);
            if let Some(m) = svc.midi().on_cc(channel, cc, value, now) {
                let _ = svc.send(Origin::Midi, m);
            }
        }
        [status, note, velocity] if status & 0xF0 == 0x90 => {
            let Some(binding) = svc.midi().on_note(status & 0x0F, note, velocity) else {
                return;
            };
            match binding.action {
                NoteAction::NewSeed => {
                    let _ = svc.send(
                        Origin::Midi,
                        ControlMessage::SetKnob {
                            name: "seed".into(),
                            value: random_seed() as f64,
                        },
                    );
                }
                NoteAction::Record => {
                    let svc = svc.clone();
                    runtime.spawn(async move {
                        if let Err(e) = svc.toggle_recording().await {
                            eprintln!("midi: record: {e}");
                        }
                    });
                }
                NoteAction::Preset => {
                    let Some(preset) = binding.preset else {
                        return; // the map never holds a preset note without its preset
                    };
                    // Through `apply`, like a preset from any surface: its source is found
                    // again (which may decode a file), so it runs on `runtime`.
                    let svc = svc.clone();
                    runtime.spawn(async move {
                        let load = ControlMessage::load_preset(*preset);
                        match svc.apply(Origin::Midi, load).await {
                            Ok(ack) => {
                                for w in ack.warnings {
                                    eprintln!("midi: preset: {w}");
                                }
                            }
                            Err(e) => eprintln!("midi: preset: {e}"),
                        }
                    });
                }
            }
        }
        _ => {}
    }
}

/// A seed from the standard library's per-process random hasher keys (no extra crate).
fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u32
}

/// Drop MIDI's hold on every knob another surface moves (relative bases and pickup follow
/// the session's value again), from the runner's `applied` events, until the session stops.
pub async fn follow_other_surfaces(svc: Arc<Service>) {
    let sub = svc.subscribe();
    while let Ok(event) = sub.recv().await {
        let Event::Applied {
            origin, message, ..
        } = event
        else {
            continue;
        };
        if origin == Origin::Midi.id() {
            continue;
        }
        match message {
            ControlMessage::SetKnob { name, .. } => svc.midi().moved_elsewhere(&name),
            ControlMessage::SetKnobs { values } => {
                values.keys().for_each(|k| svc.midi().moved_elsewhere(k))
            }
            _ => {}
        }
    }
}

/// Open every MIDI input, or report once why there is none.
pub fn start(svc: Arc<Service>) {
    tokio::spawn(follow_other_surfaces(svc.clone()));
    #[cfg(feature = "midi")]
    {
        use midir::{Ignore, MidiInput};
        let runtime = tokio::runtime::Handle::current();
        // Without the ALSA sequencer, alsa-lib would print its own raw error lines: say it once.
        if cfg!(target_os = "linux") && !std::path::Path::new("/dev/snd/seq").exists() {
            let s = "no MIDI system on this machine (no ALSA sequencer, /dev/snd/seq); MIDI input is off".to_string();
            eprintln!("midi: {s}");
            svc.midi().set_status(s);
            return;
        }
        let input = match MidiInput::new("demon") {
            Ok(i) => i,
            Err(e) => {
                let s = format!("MIDI unavailable on this machine ({e}); MIDI input is off");
                eprintln!("midi: {s}");
                svc.midi().set_status(s);
                return;
            }
        };
        let ports = input.ports();
        if ports.is_empty() {
            let s = "no MIDI input ports; MIDI input is off".to_string();
            eprintln!("midi: {s}");
            svc.midi().set_status(s);
            return;
        }
        let mut names = Vec::new();
        let mut connections = Vec::new();
        for port in ports {
            let Ok(mut input) = MidiInput::new("demon") else {
                continue;
            };
            input.ignore(Ignore::All);
            let name = input
                .port_name(&port)
                .unwrap_or_else(|_| "MIDI port".into());
            let svc2 = svc.clone();
            let runtime = runtime.clone();
            let conn = input.connect(
                &port,
                "demon-in",
                move |_, msg, _| dispatch(&svc2, &runtime, msg),
                (),
            );
            if let Ok(c) = conn {
                names.push(name);
                connections.push(c);
            }
        }
        let s = format!("listening to {}", names.join(", "));
        eprintln!("midi: {s}");
        svc.midi().set_status(s);
        // The connections live as long as the process.
        std::mem::forget(connections);
    }
    #[cfg(not(feature = "midi"))]
    {
        let s = "this binary was built without MIDI input (demon-cli --features midi; needs libasound2-dev)".to_string();
        eprintln!("midi: {s}");
        svc.midi().set_status(s);
    }
}
