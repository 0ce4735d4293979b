//! MIDI learn and mapping: the saved bindings of control changes (`channel/cc`) to knobs and of
//! notes (`note:channel/note`) to actions, the learn state shared with the UI, and what a
//! decoded MIDI message does. Pure bookkeeping with no MIDI system; `midi.rs` feeds it from
//! the hardware, and the tests feed it decoded messages.
//!
//! A note bound to `preset` keeps the whole preset it recalls (captured when it was learned),
//! so a pad is a sound slot and the map file holds the presets.
//!
//! A control change moves its knob by its binding's [`CcMode`]: absolute (0..127 over the
//! range) or one of the relative encodings of endless encoders, one step a click (a 127th of
//! the range; 1 for integer knobs). With `pickup` (soft takeover) an absolute fader whose
//! position differs from the knob does nothing until it reaches or crosses the knob's value, so
//! the knob never jumps; the knob is "dropped" again whenever another surface moves it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use demon_live::control::ControlMessage;
use demon_live::controls::{LORA_PREFIX, LORA_RANGE, knob_spec};
use demon_live::preset::Preset;
use serde::{Deserialize, Serialize};

use crate::protocol::{ApiError, CcMode, ErrorCode, NoteAction};

/// A control change bound to a knob.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CcBinding {
    pub knob: String,
    #[serde(default)]
    pub mode: CcMode,
    /// Soft takeover: wait until the fader crosses the knob's value.
    #[serde(default)]
    pub pickup: bool,
}

/// A note bound to an action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBinding {
    pub action: NoteAction,
    /// What a [`NoteAction::Preset`] note loads (present exactly for that action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Box<Preset>>,
}

impl NoteBinding {
    pub fn new(action: NoteAction) -> Self {
        Self {
            action,
            preset: None,
        }
    }

    /// A preset note carries its preset and no other note does.
    fn check(&self) -> Result<(), String> {
        match (self.action, &self.preset) {
            (NoteAction::Preset, None) => Err("a `preset` note needs its `preset`".into()),
            (NoteAction::Preset, Some(_)) | (_, None) => Ok(()),
            (a, Some(_)) => Err(format!("a `{}` note takes no `preset`", action_name(a))),
        }
    }
}

fn action_name(a: NoteAction) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn is_knob(name: &str) -> bool {
    knob_spec(name).is_some()
        || name
            .strip_prefix(LORA_PREFIX)
            .is_some_and(|id| !id.is_empty())
}

/// Read a map file: a missing file is an empty map; one that does not parse, or binds an
/// unknown knob or a malformed note, is an error naming the file and the problem.
pub fn read_map(path: &Path) -> Result<BTreeMap<String, Binding>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("MIDI map {}: {e}", path.display())),
    };
    let map: BTreeMap<String, Binding> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "MIDI map {}: {e} (an object of \"CHANNEL/CC\" or \"note:CHANNEL/NOTE\" → binding; docs/protocol.md, MIDI)",
            path.display()
        )
    })?;
    for (key, binding) in &map {
        let problem = match binding {
            Binding::Knob(k) | Binding::Cc(CcBinding { knob: k, .. }) if !is_knob(k) => {
                Some(format!("unknown knob `{k}`"))
            }
            Binding::Note(n) => n.check().err(),
            _ => None,
        };
        if let Some(p) = problem {
            return Err(format!("MIDI map {}: `{key}`: {p}", path.display()));
        }
    }
    Ok(map)
}

/// One entry of the saved map. A bare knob name (the first format of the file) is an
/// absolute binding without pickup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Binding {
    Knob(String),
    Cc(CcBinding),
    Note(NoteBinding),
}

impl Binding {
    fn cc(&self) -> Option<CcBinding> {
        match self {
            Binding::Knob(knob) => Some(CcBinding {
                knob: knob.clone(),
                mode: CcMode::Absolute,
                pickup: false,
            }),
            Binding::Cc(b) => Some(b.clone()),
            Binding::Note(_) => None,
        }
    }

    fn knob(&self) -> Option<&str> {
        match self {
            Binding::Knob(k) | Binding::Cc(CcBinding { knob: k, .. }) => Some(k),
            Binding::Note(_) => None,
        }
    }
}

/// What the next MIDI message is learned as.
#[derive(Clone, Debug, PartialEq)]
pub enum Learn {
    /// The next control change.
    Knob(CcBinding),
    /// The next note-on.
    Note(NoteBinding),
}

impl Learn {
    /// For the learn reply: the knob, or `note: ACTION`.
    pub fn describe(&self) -> String {
        match self {
            Learn::Knob(b) => b.knob.clone(),
            Learn::Note(n) => format!("note: {}", action_name(n.action)),
        }
    }
}

/// The steps an endless encoder's value means in `mode` (0 for [`CcMode::Absolute`]).
pub fn relative_steps(mode: CcMode, value: u8) -> i32 {
    let v = value.min(127) as i32;
    match mode {
        CcMode::Absolute => 0,
        CcMode::RelativeTwosComplement => {
            if v < 64 {
                v
            } else {
                v - 128
            }
        }
        CcMode::RelativeOffset64 => v - 64,
        CcMode::RelativeSignBit => {
            if v & 0x40 != 0 {
                -(v & 0x3F)
            } else {
                v & 0x3F
            }
        }
    }
}

/// Range and integer-ness of a knob of the catalog or a LoRA strength.
fn range(knob: &str) -> (f64, f64, bool) {
    knob_spec(knob).map_or((LORA_RANGE.0, LORA_RANGE.1, false), |k| {
        (k.min, k.max, k.integer)
    })
}

/// What MIDI has done to one knob since another surface last moved it.
#[derive(Clone, Copy, Debug, Default)]
struct Takeover {
    /// The value MIDI last sent (the base of relative moves while the knob's state lags).
    sent: Option<f64>,
    /// The fader's last position, in the knob's units.
    fader: Option<f64>,
    /// The fader has reached the knob's value (pickup bindings only).
    picked_up: bool,
}

/// Mappings, learn state and takeover state, shared with the UI.
pub struct MidiMap {
    path: PathBuf,
    /// Why the file did not read as a map: learned bindings are not saved over it.
    load_error: Option<String>,
    /// `"channel/cc"` and `"note:channel/note"` → binding.
    map: Mutex<BTreeMap<String, Binding>>,
    learning: Mutex<Option<Learn>>,
    takeover: Mutex<HashMap<String, Takeover>>,
    status: Mutex<String>,
}

fn cc_key(channel: u8, cc: u8) -> String {
    format!("{}/{}", channel + 1, cc)
}

fn note_key(channel: u8, note: u8) -> String {
    format!("note:{}/{}", channel + 1, note)
}

impl MidiMap {
    /// Load saved mappings. A file that does not read as a map ([`read_map`]; `demon serve`
    /// refuses to start with it) gives no bindings, is named in the status and is never
    /// overwritten by what is learned.
    pub fn load(path: &Path) -> Self {
        let (map, load_error) = match read_map(path) {
            Ok(map) => (map, None),
            Err(e) => (BTreeMap::new(), Some(e)),
        };
        Self {
            path: path.to_path_buf(),
            load_error,
            map: Mutex::new(map),
            learning: Mutex::new(None),
            takeover: Mutex::new(HashMap::new()),
            status: Mutex::new("MIDI not started".into()),
        }
    }

    pub fn status(&self) -> String {
        let status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match &self.load_error {
            Some(e) => format!("{status}; {e} (learned bindings are not saved over it)"),
            None => status,
        }
    }

    pub fn set_status(&self, s: String) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn mappings(&self) -> BTreeMap<String, Binding> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Learn the next control change (a knob) or note (an action).
    pub fn learn(&self, target: Learn) -> Result<(), ApiError> {
        match &target {
            Learn::Knob(b) if !is_knob(&b.knob) => {
                return Err(ApiError::new(
                    ErrorCode::UnknownKnob,
                    format!(
                        "unknown knob `{}` (see list_knobs; LoRA strengths are `lora:<id>`)",
                        b.knob
                    ),
                ));
            }
            Learn::Note(n) => n
                .check()
                .map_err(|e| ApiError::new(ErrorCode::BadMessage, e))?,
            Learn::Knob(_) => {}
        }
        *self.learning.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
        Ok(())
    }

    /// Save `binding` under `key`, replacing any other binding of the same knob or action
    /// (preset notes are slots: each keeps its own).
    fn bind(&self, key: String, binding: Binding) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, b| match (&binding, &*b) {
            (Binding::Note(n), Binding::Note(m)) => {
                n.action == NoteAction::Preset || n.action != m.action
            }
            (Binding::Note(_), _) | (_, Binding::Note(_)) => true,
            _ => b.knob() != binding.knob(),
        });
        map.insert(key, binding);
        let _ = self.save(&map);
    }

    /// The knob a control change is bound to, if any.
    pub fn cc_knob(&self, channel: u8, cc: u8) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cc_key(channel, cc))?
            .knob()
            .map(String::from)
    }

    /// A control change arrived: learn it, or turn it into a knob change. `current` is the
    /// knob's target value in the session (for relative moves and pickup).
    pub fn on_cc(
        &self,
        channel: u8,
        cc: u8,
        value: u8,
        current: Option<f64>,
    ) -> Option<ControlMessage> {
        let key = cc_key(channel, cc);
        {
            let mut learning = self.learning.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Learn::Knob(b)) = learning.as_ref() {
                let binding = if b.mode == CcMode::Absolute && !b.pickup {
                    Binding::Knob(b.knob.clone())
                } else {
                    Binding::Cc(b.clone())
                };
                *learning = None;
                drop(learning);
                self.bind(key, binding);
                return None;
            }
        }
        let b = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)?
            .cc()?;
        let (lo, hi, integer) = range(&b.knob);
        let mut takeover = self.takeover.lock().unwrap_or_else(|e| e.into_inner());
        let t = takeover.entry(b.knob.clone()).or_default();
        let value = if b.mode == CcMode::Absolute {
            let x = lo + (hi - lo) * value.min(127) as f64 / 127.0;
            if b.pickup && !t.picked_up {
                let previous = t.fader.replace(x);
                if let Some(k) = t.sent.or(current) {
                    // Within one CC step of the knob, or on the other side of it from where
                    // the fader was.
                    let near = (x - k).abs() <= (hi - lo) / 127.0 + 1e-9;
                    let crossed = previous.is_some_and(|p| (p - k) * (x - k) <= 0.0);
                    if !(near || crossed) {
                        return None;
                    }
                }
                t.picked_up = true;
            }
            t.fader = Some(x);
            x
        } else {
            let steps = relative_steps(b.mode, value);
            if steps == 0 {
                return None;
            }
            let step = if integer { 1.0 } else { (hi - lo) / 127.0 };
            let base = t.sent.or(current).unwrap_or(lo);
            (base + steps as f64 * step).clamp(lo, hi)
        };
        t.sent = Some(value);
        Some(ControlMessage::SetKnob {
            value,
            name: b.knob,
        })
    }

    /// A note-on arrived (velocity 0 is a note-off, as MIDI says): learn it, or the action it
    /// is bound to.
    pub fn on_note(&self, channel: u8, note: u8, velocity: u8) -> Option<NoteBinding> {
        if velocity == 0 {
            return None;
        }
        let key = note_key(channel, note);
        {
            let mut learning = self.learning.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Learn::Note(n)) = learning.as_ref() {
                let n = n.clone();
                *learning = None;
                drop(learning);
                self.bind(key, Binding::Note(n));
                return None;
            }
        }
        match self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)?
        {
            Binding::Note(n) => Some(n.clone()),
            _ => None,
        }
    }

    /// Another surface moved `knob`: MIDI's base for it is the session's value again, and a
    /// pickup fader must reach it again before it moves it.
    pub fn moved_elsewhere(&self, knob: &str) {
        if let Some(t) = self
            .takeover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(knob)
        {
            t.sent = None;
            t.picked_up = false;
        }
    }

    fn save(&self, map: &BTreeMap<String, Binding>) -> std::io::Result<()> {
        if self.load_error.is_some() {
            return Ok(());
        }
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

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("demon-midi-{tag}-{}.json", std::process::id()))
    }

    fn knob(name: &str) -> Learn {
        Learn::Knob(CcBinding {
            knob: name.into(),
            mode: CcMode::Absolute,
            pickup: false,
        })
    }

    fn value(m: Option<ControlMessage>) -> Option<f64> {
        match m {
            Some(ControlMessage::SetKnob { value, .. }) => Some(value),
            None => None,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn learn_then_map_and_save() {
        let path = temp("learn");
        let s = MidiMap::load(&path);
        assert!(s.learn(knob("wobble")).is_err());
        s.learn(knob("denoise")).unwrap();
        assert_eq!(
            s.on_cc(0, 21, 64, None),
            None,
            "the first CC is learned, not applied"
        );
        assert_eq!(
            s.on_cc(0, 21, 127, None),
            Some(ControlMessage::SetKnob {
                name: "denoise".into(),
                value: 1.0
            })
        );
        assert_eq!(
            s.on_cc(1, 21, 127, None),
            None,
            "other channels are not mapped"
        );
        let again = MidiMap::load(&path);
        assert_eq!(
            again.mappings().get("1/21"),
            Some(&Binding::Knob("denoise".into()))
        );
    }

    #[test]
    fn the_first_file_format_still_loads() {
        let path = temp("old");
        std::fs::write(&path, r#"{"1/7": "guidance"}"#).unwrap();
        let s = MidiMap::load(&path);
        // 1 + 9 · 127/127
        assert_eq!(value(s.on_cc(0, 7, 127, Some(1.0))), Some(10.0));
        assert_eq!(value(s.on_cc(0, 7, 0, Some(10.0))), Some(1.0));
    }

    #[test]
    fn relative_encodings_decode_as_documented() {
        use CcMode::*;
        for (mode, v, steps) in [
            (RelativeTwosComplement, 1, 1),
            (RelativeTwosComplement, 5, 5),
            (RelativeTwosComplement, 127, -1),
            (RelativeTwosComplement, 124, -4),
            (RelativeTwosComplement, 64, -64),
            (RelativeTwosComplement, 0, 0),
            (RelativeOffset64, 65, 1),
            (RelativeOffset64, 63, -1),
            (RelativeOffset64, 64, 0),
            (RelativeOffset64, 70, 6),
            (RelativeSignBit, 3, 3),
            (RelativeSignBit, 65, -1),
            (RelativeSignBit, 67, -3),
            (Absolute, 90, 0),
        ] {
            assert_eq!(relative_steps(mode, v), steps, "{mode:?} {v}");
        }
    }

    #[test]
    fn relative_encoders_step_from_the_knobs_value() {
        let s = MidiMap::load(&temp("relative"));
        s.learn(Learn::Knob(CcBinding {
            knob: "guidance".into(),
            mode: CcMode::RelativeTwosComplement,
            pickup: false,
        }))
        .unwrap();
        s.on_cc(0, 10, 1, None);
        // Guidance 1..10: a step is 9/127. From the session's 4.0: +2 steps, then -1 (127),
        // then +1: the state has not caught up (still 4.0), the moves add up on what MIDI sent.
        let step = 9.0 / 127.0;
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(value(s.on_cc(0, 10, 2, Some(4.0))), 4.0 + 2.0 * step));
        assert!(close(value(s.on_cc(0, 10, 127, Some(4.0))), 4.0 + step));
        assert!(close(value(s.on_cc(0, 10, 1, Some(4.0))), 4.0 + 2.0 * step));
        // Someone else set 9.95: the next move starts there, and stops at the range's end.
        s.moved_elsewhere("guidance");
        assert_eq!(value(s.on_cc(0, 10, 3, Some(9.95))), Some(10.0));
        // Offset-64 on an integer knob: one unit a click.
        s.learn(Learn::Knob(CcBinding {
            knob: "depth".into(),
            mode: CcMode::RelativeOffset64,
            pickup: false,
        }))
        .unwrap();
        s.on_cc(0, 11, 64, None);
        assert_eq!(value(s.on_cc(0, 11, 66, Some(4.0))), Some(6.0));
        assert_eq!(value(s.on_cc(0, 11, 63, Some(4.0))), Some(5.0));
        assert_eq!(value(s.on_cc(0, 11, 64, Some(4.0))), None, "no move");
        assert_eq!(value(s.on_cc(0, 11, 0, Some(4.0))), Some(1.0), "clamped");
        // The mode is saved with the binding.
        assert_eq!(
            MidiMap::load(&temp("relative")).mappings()["1/11"],
            Binding::Cc(CcBinding {
                knob: "depth".into(),
                mode: CcMode::RelativeOffset64,
                pickup: false
            })
        );
    }

    #[test]
    fn a_pickup_fader_moves_the_knob_only_after_crossing_it() {
        let s = MidiMap::load(&temp("pickup"));
        s.learn(Learn::Knob(CcBinding {
            knob: "denoise".into(),
            mode: CcMode::Absolute,
            pickup: true,
        }))
        .unwrap();
        s.on_cc(0, 1, 0, None);
        let at = Some(0.5);
        // The fader starts low and rises toward the knob's 0.5: nothing happens...
        for v in [10, 30, 50, 62] {
            assert_eq!(s.on_cc(0, 1, v, at), None, "fader at {v}");
        }
        // ...until it passes it (62 → 66 crosses 0.5 = 63.5/127); then it follows.
        assert_eq!(value(s.on_cc(0, 1, 66, at)), Some(66.0 / 127.0));
        assert_eq!(value(s.on_cc(0, 1, 20, at)), Some(20.0 / 127.0));
        // The UI moves the knob to 0.9: the fader (at 20) is dropped until it reaches 0.9.
        s.moved_elsewhere("denoise");
        let at = Some(0.9);
        assert_eq!(s.on_cc(0, 1, 40, at), None);
        assert_eq!(s.on_cc(0, 1, 100, at), None);
        // 114/127 ≈ 0.898 is within one step of 0.9: picked up without crossing.
        assert_eq!(value(s.on_cc(0, 1, 114, at)), Some(114.0 / 127.0));
        // From above works the same way.
        s.moved_elsewhere("denoise");
        let at = Some(0.2);
        assert_eq!(s.on_cc(0, 1, 120, at), None);
        assert_eq!(s.on_cc(0, 1, 60, at), None);
        assert_eq!(value(s.on_cc(0, 1, 10, at)), Some(10.0 / 127.0));
        // Without pickup the same fader jumps at once.
        let plain = MidiMap::load(&temp("nopickup"));
        plain.learn(knob("denoise")).unwrap();
        plain.on_cc(0, 1, 0, None);
        assert_eq!(value(plain.on_cc(0, 1, 10, Some(0.9))), Some(10.0 / 127.0));
    }

    #[test]
    fn notes_learn_and_trigger_actions() {
        let path = temp("notes");
        let s = MidiMap::load(&path);
        s.learn(Learn::Note(NoteBinding::new(NoteAction::NewSeed)))
            .unwrap();
        // A CC while a note is being learned is neither learned nor applied (nothing mapped).
        assert_eq!(s.on_cc(0, 5, 10, None), None);
        assert_eq!(s.on_note(9, 36, 100), None, "learned");
        s.learn(Learn::Note(NoteBinding::new(NoteAction::Record)))
            .unwrap();
        assert_eq!(s.on_note(9, 37, 90), None, "learned");
        let action = |n: Option<NoteBinding>| n.map(|n| n.action);
        assert_eq!(action(s.on_note(9, 36, 100)), Some(NoteAction::NewSeed));
        assert_eq!(action(s.on_note(9, 37, 1)), Some(NoteAction::Record));
        assert_eq!(s.on_note(9, 37, 0), None, "velocity 0 is a note-off");
        assert_eq!(s.on_note(0, 36, 100), None, "another channel");
        // Learning an action again moves it to the new note.
        s.learn(Learn::Note(NoteBinding::new(NoteAction::Record)))
            .unwrap();
        s.on_note(9, 38, 90);
        assert_eq!(s.on_note(9, 37, 90), None);
        assert_eq!(action(s.on_note(9, 38, 90)), Some(NoteAction::Record));
        let saved = MidiMap::load(&path).mappings();
        assert_eq!(
            saved.get("note:10/36"),
            Some(&Binding::Note(NoteBinding::new(NoteAction::NewSeed)))
        );
        assert_eq!(saved.len(), 2, "{saved:?}");
    }

    fn preset(denoise: f64) -> Option<Box<Preset>> {
        let mut p = Preset::default();
        p.knobs.insert("denoise".into(), denoise);
        Some(Box::new(p))
    }

    #[test]
    fn preset_notes_are_slots_that_keep_their_preset_in_the_file() {
        let path = temp("preset-notes");
        let s = MidiMap::load(&path);
        // A preset note needs its preset, and no other note takes one.
        assert!(
            s.learn(Learn::Note(NoteBinding::new(NoteAction::Preset)))
                .is_err()
        );
        let wrong = NoteBinding {
            action: NoteAction::NewSeed,
            preset: preset(0.1),
        };
        assert!(s.learn(Learn::Note(wrong)).is_err());
        for (note, denoise) in [(40, 0.2), (41, 0.9)] {
            s.learn(Learn::Note(NoteBinding {
                action: NoteAction::Preset,
                preset: preset(denoise),
            }))
            .unwrap();
            assert_eq!(s.on_note(0, note, 100), None, "learned");
        }
        // Two pads, two presets (learning a second does not move the first).
        let recall = |s: &MidiMap, note| s.on_note(0, note, 100).and_then(|n| n.preset);
        assert_eq!(recall(&s, 40), preset(0.2));
        assert_eq!(recall(&s, 41), preset(0.9));
        let again = MidiMap::load(&path);
        assert_eq!(recall(&again, 40), preset(0.2), "saved with its preset");
        assert_eq!(recall(&again, 41), preset(0.9));
    }

    #[test]
    fn a_map_file_that_does_not_read_is_named_and_never_overwritten() {
        for (tag, text, says) in [
            ("json", "{\"1/7\": ", "EOF while parsing"),
            (
                "knob",
                r#"{"1/7": "wobble"}"#,
                "`1/7`: unknown knob `wobble`",
            ),
            (
                "nopreset",
                r#"{"note:1/40": {"action": "preset"}}"#,
                "needs its `preset`",
            ),
            (
                "extra",
                r#"{"note:1/40": {"action": "record", "preset": {}}}"#,
                "a `record` note takes no `preset`",
            ),
        ] {
            let path = temp(&format!("bad-{tag}"));
            std::fs::write(&path, text).unwrap();
            let e = read_map(&path).unwrap_err();
            assert!(
                e.contains(&path.display().to_string()) && e.contains(says),
                "{tag}: {e}"
            );
            let s = MidiMap::load(&path);
            assert!(
                s.mappings().is_empty() && s.status().contains(says),
                "{}",
                s.status()
            );
            s.learn(knob("denoise")).unwrap();
            s.on_cc(0, 1, 0, None);
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                text,
                "{tag}: kept as written"
            );
        }
        assert!(read_map(&temp("missing")).unwrap().is_empty());
    }

    #[test]
    fn the_documented_map_file_reads() {
        let doc = include_str!("../../../docs/protocol.md");
        let midi = &doc[doc.find("\n## MIDI").expect("a MIDI section")..];
        let start = midi.find("\n```\n").expect("a map file example") + 5;
        let len = midi[start..].find("```").expect("its end");
        let path = temp("documented");
        std::fs::write(&path, &midi[start..start + len]).unwrap();
        let map = read_map(&path).unwrap();
        assert_eq!(map.len(), 6, "{map:?}");
        assert!(matches!(
            &map["note:10/40"],
            Binding::Note(NoteBinding { action: NoteAction::Preset, preset: Some(p) }) if p.knobs["denoise"] == 0.25
        ));
    }
}
