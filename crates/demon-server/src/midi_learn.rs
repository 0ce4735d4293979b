//! MIDI learn: the saved mapping from control changes (`channel/cc`) to knobs, and the learn
//! state shared with the UI. Pure bookkeeping with no MIDI system; `midi.rs` feeds it from the
//! hardware.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use demon_live::control::ControlMessage;
use demon_live::controls::{LORA_PREFIX, knob_spec};

use crate::protocol::{ApiError, ErrorCode};

/// Mappings and learn state, shared with the UI.
pub struct MidiMap {
    path: PathBuf,
    /// `"channel/cc"` → knob name.
    map: Mutex<BTreeMap<String, String>>,
    learning: Mutex<Option<String>>,
    status: Mutex<String>,
}

impl MidiMap {
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

    pub fn set_status(&self, s: String) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn mappings(&self) -> BTreeMap<String, String> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Map the next control change received to `knob`.
    pub fn learn(&self, knob: &str) -> Result<(), ApiError> {
        let adapter = knob
            .strip_prefix(LORA_PREFIX)
            .is_some_and(|id| !id.is_empty());
        if knob_spec(knob).is_none() && !adapter {
            return Err(ApiError::new(
                ErrorCode::UnknownKnob,
                format!("unknown knob `{knob}` (see list_knobs; LoRA strengths are `lora:<id>`)"),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_then_map_and_save() {
        let path = std::env::temp_dir().join(format!("demon-midi-{}.json", std::process::id()));
        let s = MidiMap::load(&path);
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
        let again = MidiMap::load(&path);
        assert_eq!(
            again.mappings().get("1/21").map(String::as_str),
            Some("denoise")
        );
    }
}
