//! Hardware MIDI input with MIDI learn: control changes mapped to knobs. MIDI is optional at
//! build (the `midi` feature) and at run time: a machine without a MIDI system says so once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;

use demon_live::control::{ControlMessage, check_knob, knob_spec};

use crate::App;

/// Origin id of MIDI-sent controls in echoes.
pub const MIDI_ORIGIN: u64 = u64::MAX - 2;

/// Mappings and learn state, shared with the UI.
pub struct MidiState {
    path: PathBuf,
    /// `"channel/cc"` → knob name.
    map: Mutex<BTreeMap<String, String>>,
    learning: Mutex<Option<String>>,
    status: Mutex<String>,
}

impl MidiState {
    /// Load saved mappings (a missing or unreadable file means none).
    pub fn load(path: &Path) -> Self {
        let map = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        Self {
            path: path.to_path_buf(),
            map: Mutex::new(map),
            learning: Mutex::new(None),
            status: Mutex::new("MIDI not started".into()),
        }
    }

    pub fn status(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, s: String) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn mappings(&self) -> BTreeMap<String, String> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Map the next control change received to `knob`.
    pub fn learn(&self, knob: &str) -> Result<(), String> {
        check_knob(knob, knob_spec(knob).map_or(0.0, |k| k.default))?;
        *self.learning.lock().unwrap_or_else(|e| e.into_inner()) = Some(knob.to_string());
        Ok(())
    }

    /// A control change arrived: learn it, or turn it into a knob change.
    pub fn on_cc(&self, channel: u8, cc: u8, value: u8) -> Option<ControlMessage> {
        let key = format!("{}/{}", channel + 1, cc);
        if let Some(knob) = self
            .learning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, v| *v != knob);
            map.insert(key, knob);
            let _ = self.save(&map);
            return None;
        }
        let knob = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()?;
        let (lo, hi) = knob_spec(&knob).map_or((0.0, 2.0), |k| (k.min, k.max));
        Some(ControlMessage::SetKnob {
            value: lo + (hi - lo) * value.min(127) as f64 / 127.0,
            name: knob,
        })
    }

    fn save(&self, map: &BTreeMap<String, String>) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &self.path,
            serde_json::to_string_pretty(map).unwrap_or_default(),
        )
    }
}

/// Open every MIDI input, or report once why there is none.
pub fn start(app: Arc<App>) {
    #[cfg(feature = "midi")]
    {
        use midir::{Ignore, MidiInput};
        let input = match MidiInput::new("demon") {
            Ok(i) => i,
            Err(e) => {
                let s = format!("MIDI unavailable on this machine ({e}); MIDI input is off");
                eprintln!("midi: {s}");
                app.midi.set_status(s);
                return;
            }
        };
        let ports = input.ports();
        if ports.is_empty() {
            let s = "no MIDI input ports; MIDI input is off".to_string();
            eprintln!("midi: {s}");
            app.midi.set_status(s);
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
            let app2 = app.clone();
            let handle = app.handle.clone();
            let conn = input.connect(
                &port,
                "demon-in",
                move |_, msg, _| {
                    if let [status, cc, value] = msg
                        && status & 0xF0 == 0xB0
                        && let Some(m) = app2.midi.on_cc(status & 0x0F, *cc, *value)
                    {
                        let _ = handle.send(MIDI_ORIGIN, m);
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
        app.midi.set_status(s);
        // The connections live as long as the process.
        std::mem::forget(connections);
    }
    #[cfg(not(feature = "midi"))]
    {
        let s = "this binary was built without MIDI input (demon-cli --features midi; needs libasound2-dev)".to_string();
        eprintln!("midi: {s}");
        app.midi.set_status(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_then_map_and_save() {
        let path = std::env::temp_dir().join(format!("demon-midi-{}.json", std::process::id()));
        let s = MidiState::load(&path);
        assert!(s.learn("wobble").is_err());
        s.learn("denoise").unwrap();
        assert_eq!(
            s.on_cc(0, 21, 64),
            None,
            "the first CC is learned, not applied"
        );
        assert_eq!(
            s.on_cc(0, 21, 127),
            Some(ControlMessage::SetKnob {
                name: "denoise".into(),
                value: 1.0
            })
        );
        assert_eq!(s.on_cc(1, 21, 127), None, "other channels are not mapped");
        let again = MidiState::load(&path);
        assert_eq!(
            again.mappings().get("1/21").map(String::as_str),
            Some("denoise")
        );
    }
}
