//! Hardware MIDI input: every MIDI input port's control changes, mapped to knobs by MIDI learn
//! (`midi_learn.rs`). MIDI is optional at build (the `midi` feature) and at run time: a machine
//! without a MIDI system says so once.

use std::sync::Arc;

#[cfg(feature = "midi")]
use crate::service::Origin;
use crate::service::Service;

/// Open every MIDI input, or report once why there is none.
pub fn start(svc: Arc<Service>) {
    #[cfg(feature = "midi")]
    {
        use midir::{Ignore, MidiInput};
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
            let conn = input.connect(
                &port,
                "demon-in",
                move |_, msg, _| {
                    if let [status, cc, value] = msg
                        && status & 0xF0 == 0xB0
                        && let Some(m) = svc2.midi().on_cc(status & 0x0F, *cc, *value)
                    {
                        // The callback runs on midir's thread: hand the change over without
                        // waiting (a full queue drops it, like a missed CC).
                        let _ = svc2.send(Origin::Midi, m);
                    }
                },
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
