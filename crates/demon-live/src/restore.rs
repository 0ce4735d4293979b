//! How a preset ([`crate::preset`]) meets a session: taken from its controls, applied to them
//! all or nothing, found at the end of a session recording, read from a file for
//! `demon serve --load`.
//!
//! Loading goes through the control path like any other control
//! ([`crate::control::ControlMessage::LoadPreset`]), so a session file records it and a replay
//! repeats it; it is all or nothing (the live core checks every field before it changes
//! anything). Values are checked by the same code every other control goes through
//! ([`Controls::apply`], [`crate::controls::check_knob`]), with the error prefixed by the
//! preset field that carries the value.

use std::collections::BTreeMap;
use std::path::Path;

use demon_engine::Prompt;

use crate::control::{ControlMessage, ReferenceRole, SourceSpec};
use crate::controls::{Controls, LORA_PREFIX};
use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;
use crate::preset::{
    PRESET_VERSION, Preset, PresetLoopBand, PresetPrompts, PresetReferences, PresetSource,
    PromptTask,
};
use crate::record::SessionFile;

impl Default for Preset {
    /// The state of a fresh session with an empty prompt (the catalog's defaults): what the
    /// fields a document leaves out take. Its `preset_version` is 0, so a document without
    /// one is refused.
    fn default() -> Self {
        Self {
            preset_version: 0,
            ..Self::of(&Controls::new(Prompt::default(), 1), None)
        }
    }
}

impl Preset {
    /// The preset of `controls` with the loop band `loop_band` (seconds).
    pub fn of(controls: &Controls, loop_band: Option<(f64, f64)>) -> Self {
        let p = &controls.prompts;
        let mut knobs = BTreeMap::new();
        let mut loras = BTreeMap::new();
        for (name, v) in controls.target_map() {
            match name.strip_prefix(LORA_PREFIX) {
                Some(id) => loras.insert(id.to_string(), v),
                None => knobs.insert(name, v),
            };
        }
        let reference =
            |role| PresetSource::from_name(controls.reference(role).map(|s| s.name.as_str()));
        Self {
            preset_version: PRESET_VERSION,
            prompts: PresetPrompts {
                prompt: p.a.tags.clone(),
                prompt_b: p.b.clone(),
                negative: p.negative.clone(),
                bpm: p.a.bpm,
                key: p.a.key.clone(),
                lyrics: p.a.lyrics.clone(),
                language: p.a.language.clone(),
                time_signature: p.a.time_signature,
                task: PromptTask::of(p.a.task),
            },
            knobs,
            loras,
            curves: controls.curve_specs(),
            automation: controls.lanes().clone(),
            solver: controls.solver,
            cfg_mode: controls.cfg_mode,
            dcw_enabled: controls.dcw_enabled,
            dcw_mode: controls.dcw_mode,
            dcw_wavelet: controls.dcw_wavelet,
            slew_per_second: controls.slew_per_second(),
            source: PresetSource::from_name(controls.source().map(|s| s.name.as_str())),
            references: PresetReferences {
                timbre: reference(ReferenceRole::Timbre),
                structure: reference(ReferenceRole::Structure),
            },
            loop_band: loop_band.map(|(start_s, end_s)| PresetLoopBand { start_s, end_s }),
        }
    }

    /// Set every control value of `controls` to this preset's, through the same checks every
    /// control goes through; the source is left as it is (the live core sets it). On error
    /// `controls` is unchanged and the error names the preset field.
    pub fn apply_to(&self, controls: &mut Controls, facts: &BackendFacts) -> SessionResult<()> {
        self.check_version()?;
        self.checked_loop_band()?;
        let field = |name: String| {
            move |e: SessionError| {
                SessionError::bad_value(format!("preset field `{name}`"), e.to_string())
            }
        };
        let mut next = controls.clone();
        next.reset_values();
        // A preset is recalled whole: every knob jumps to its value (no slew from the old one).
        next.set_slew_off();
        for (name, v) in &self.knobs {
            if name.starts_with(LORA_PREFIX) {
                return Err(SessionError::bad_value(
                    format!("preset field `knobs.{name}`"),
                    "LoRA strengths go in `loras`, by adapter id",
                ));
            }
            next.set_knob(name, *v, facts)
                .map_err(field(format!("knobs.{name}")))?;
        }
        for (id, v) in &self.loras {
            next.set_knob(&format!("{LORA_PREFIX}{id}"), *v, facts)
                .map_err(field(format!("loras.{id}")))?;
        }
        for (name, spec) in &self.curves {
            next.set_curve(name, Some(spec))
                .map_err(field(format!("curves.{name}")))?;
        }
        // After the knobs: an automated knob refuses a hand value.
        for (name, lane) in &self.automation {
            next.set_lane(name, Some(lane), facts)
                .map_err(field(format!("automation.{name}")))?;
        }
        let p = &self.prompts;
        next.prompts.a = Prompt {
            tags: p.prompt.clone(),
            lyrics: p.lyrics.clone(),
            bpm: p.bpm,
            key: p.key.clone().filter(|k| !k.is_empty()),
            time_signature: p.time_signature,
            language: p.language.clone(),
            task: p.task.task(),
            ..next.prompts.a.clone()
        };
        next.prompts.b = p.prompt_b.clone().filter(|t| !t.trim().is_empty());
        next.prompts.negative = p.negative.clone().filter(|t| !t.trim().is_empty());
        next.prompts.validate().map_err(|e| match e {
            SessionError::BadValue { what, problem } => {
                SessionError::bad_value(format!("preset field `prompts`: {what}"), problem)
            }
            other => other,
        })?;
        next.apply(
            &ControlMessage::SetSolver {
                solver: self.solver,
            },
            facts,
        )?;
        next.apply(
            &ControlMessage::SetCfgMode {
                mode: self.cfg_mode,
            },
            facts,
        )?;
        next.apply(
            &ControlMessage::SetDcw {
                enabled: Some(self.dcw_enabled),
                mode: Some(self.dcw_mode),
                wavelet: Some(self.dcw_wavelet),
            },
            facts,
        )?;
        next.set_slew(self.slew_per_second)
            .map_err(field("slew_per_second".into()))?;
        *controls = next;
        Ok(())
    }
}

/// Whether `text` (a file's first bytes) is a session recording rather than a preset: its
/// first line is the session file's header.
pub fn is_session_file(text: &[u8]) -> bool {
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(first)
        .ok()
        .and_then(|v| {
            v.get("type")
                .and_then(|t| t.as_str())
                .map(|t| t == "header")
        })
        .unwrap_or(false)
}

/// The state a recorded session ended in: the controls as a preset, and the source and
/// references it played as recorded (latents).
pub struct FinalState {
    pub preset: Preset,
    /// `None` when the source never changed from the header's.
    pub source: Option<SourceSpec>,
    /// The references set at the end (`none` for a role cleared or never set).
    pub references: BTreeMap<ReferenceRole, SourceSpec>,
}

/// The state a recorded session ended in, found by applying its control events in order to
/// the controls of its header. Audio and clocks are not replayed.
pub fn final_state(file: &SessionFile, facts: &BackendFacts) -> SessionResult<FinalState> {
    let cfg = &file.config;
    let mut controls = Controls::from_config(cfg, facts.frames(cfg.song_seconds), facts)?;
    let mut source = match &cfg.source {
        SourceSpec::None => None,
        s => Some(s.clone()),
    };
    let mut references: BTreeMap<ReferenceRole, SourceSpec> = BTreeMap::new();
    let mut band = None;
    for (tick, message) in &file.events {
        let at = |e: SessionError| {
            SessionError::bad_value(format!("session event at tick {tick}"), e.to_string())
        };
        match message {
            ControlMessage::SetSource { source: s } => source = Some(s.clone()),
            ControlMessage::SetReference { role, source: s } => {
                references.insert(*role, s.clone());
            }
            ControlMessage::SetLoopBand { start_s, end_s } => band = Some((*start_s, *end_s)),
            ControlMessage::ClearLoopBand => band = None,
            ControlMessage::Seek { .. } | ControlMessage::SetPlaying { .. } => {}
            ControlMessage::LoadPreset {
                preset,
                source: s,
                references: r,
            } => {
                preset.apply_to(&mut controls, facts).map_err(at)?;
                band = preset.checked_loop_band().map_err(at)?;
                if let Some(s) = s {
                    source = Some(s.clone());
                }
                references.extend(r.iter().map(|(role, s)| (*role, s.clone())));
            }
            other => {
                controls.apply(other, facts).map_err(at)?;
            }
        }
    }
    let mut preset = Preset::of(&controls, band);
    preset.source = preset_source(source.as_ref());
    let reference = |role| preset_source(references.get(&role));
    preset.references = PresetReferences {
        timbre: reference(ReferenceRole::Timbre),
        structure: reference(ReferenceRole::Structure),
    };
    for role in ReferenceRole::ALL {
        references.entry(role).or_insert(SourceSpec::None);
    }
    Ok(FinalState {
        preset,
        source,
        references,
    })
}

/// How a preset names a source the session played.
fn preset_source(source: Option<&SourceSpec>) -> PresetSource {
    match source {
        None | Some(SourceSpec::None) => PresetSource::None,
        Some(SourceSpec::Audio { name, .. } | SourceSpec::Latent { name, .. }) => {
            PresetSource::from_name(Some(name))
        }
        Some(SourceSpec::Library { style, index }) => PresetSource::Library {
            style: style.clone(),
            index: *index,
        },
        Some(SourceSpec::File { path }) => PresetSource::File { path: path.clone() },
    }
}

/// What `demon serve --load FILE` applies: a preset file as a `load_preset` control (its
/// source resolved by the server), or a session recording's final state with the source it
/// played (the recorded latent). Returns the control and the file's warnings (a recording cut
/// short).
pub fn load_file(
    path: &Path,
    facts: &BackendFacts,
) -> SessionResult<(ControlMessage, Vec<String>)> {
    let bytes = std::fs::read(path).map_err(|e| SessionError::io(path, e))?;
    if !is_session_file(&bytes) {
        let preset = Preset::from_json(&bytes).map_err(|e| match e {
            SessionError::BadValue { what, problem } => SessionError::BadValue {
                what: format!("`{}`: {what}", path.display()),
                problem,
            },
            other => other,
        })?;
        return Ok((ControlMessage::load_preset(preset), Vec::new()));
    }
    drop(bytes);
    let file = crate::record::read_session(path)?;
    file.check_backend(&facts.name)?;
    let last = final_state(&file, facts)?;
    Ok((
        ControlMessage::LoadPreset {
            preset: Box::new(last.preset),
            source: Some(last.source.unwrap_or(SourceSpec::None)),
            references: last.references,
        },
        file.warnings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use demon_engine::{CurveSpec, SolverKind};

    use crate::facts::test_facts as facts;

    fn state() -> Controls {
        let f = facts();
        let mut c = Controls::new(Prompt::tags("house"), 100);
        c.set_knob("denoise", 0.3, &f).unwrap();
        c.set_knob("seed", 7.0, &f).unwrap();
        c.set_knob("lora:funk", 0.8, &f).unwrap();
        c.set_curve(
            "blend",
            Some(&CurveSpec::Ramp {
                start: 0.0,
                end: 1.0,
            }),
        )
        .unwrap();
        c.prompts.a.bpm = Some(128.0);
        c.prompts.a.key = Some("A minor".into());
        c.prompts.b = Some("techno".into());
        c.solver = SolverKind::Sde;
        c
    }

    use crate::controls::KNOBS;

    #[test]
    fn a_preset_round_trips_through_json_and_controls() {
        let f = facts();
        let c = state();
        let p = Preset::of(&c, Some((1.0, 2.5)));
        assert_eq!(p.knobs.len(), KNOBS.len(), "every catalog knob is saved");
        assert_eq!(p.knobs["seed"], 7.0);
        assert_eq!(p.loras["funk"], 0.8);
        let back = Preset::from_json(p.to_json().as_bytes()).unwrap();
        assert_eq!(back, p);
        let mut fresh = Controls::new(Prompt::tags("ambient"), 100);
        back.apply_to(&mut fresh, &f).unwrap();
        assert_eq!(fresh.target_map(), c.target_map());
        assert_eq!(fresh.knob_map(), c.target_map(), "a recalled preset jumps");
        assert_eq!(fresh.curve_specs(), c.curve_specs());
        assert_eq!(fresh.prompts, c.prompts);
        assert_eq!(fresh.solver, SolverKind::Sde);
        assert_eq!(Preset::of(&fresh, Some((1.0, 2.5))), p);
    }

    #[test]
    fn fields_left_out_take_their_defaults() {
        let f = facts();
        let mut c = state();
        let p = Preset::from_json(br#"{"preset_version": 1, "knobs": {"depth": 2}}"#).unwrap();
        p.apply_to(&mut c, &f).unwrap();
        let mut want = Controls::new(Prompt::default(), 100);
        want.set_knob("depth", 2.0, &f).unwrap();
        assert_eq!(c.target_map(), want.target_map());
        assert!(c.curve_specs().is_empty());
        assert_eq!(c.prompts.b, None);
        assert_eq!(c.prompts.a.bpm, None, "the bpm override is cleared");
    }

    #[test]
    fn bad_presets_name_the_field_and_change_nothing() {
        let f = facts();
        let cases: [(&[u8], &str); 9] = [
            (br#"{"preset_version": 1, "wobble": 1}"#, "unknown field `wobble`"),
            (br#"{"preset_version": 1, "knobs": {"denoise": "x"}}"#, "`knobs.denoise`"),
            (br#"{"preset_version": 1, "knobs": {"depth": 99}}"#, "`knobs.depth`: knob `depth`: 99 is outside [1, 8]"),
            (br#"{"preset_version": 1, "knobs": {"wobble": 1}}"#, "`knobs.wobble`: unknown knob `wobble`"),
            (br#"{"preset_version": 1, "loras": {"polka": 1}}"#, "`loras.polka`"),
            (br#"{"preset_version": 1, "prompts": {"bpm": 1000}}"#, "`prompts`"),
            (br#"{"preset_version": 1, "curves": {"sde_denoise": {"type": "constant", "value": 5}}}"#, "`curves.sde_denoise`"),
            (br#"{"preset_version": 2}"#, "`preset_version`"),
            (br#"{"preset_version": 1, "loop_band": {"start_s": 3, "end_s": 1}}"#, "`loop_band`"),
        ];
        for (text, want) in cases {
            let mut c = state();
            let before = c.clone();
            let e = Preset::from_json(text)
                .and_then(|p| p.apply_to(&mut c, &f))
                .unwrap_err();
            assert_eq!(e.code(), "bad_value", "{e}");
            assert!(e.to_string().contains(want), "{e} should contain {want}");
            assert_eq!(c, before);
        }
        assert!(
            Preset::from_json(br#"{}"#)
                .unwrap_err()
                .to_string()
                .contains("preset_version")
        );
    }

    #[test]
    fn source_references_follow_the_name_the_session_shows() {
        assert_eq!(PresetSource::from_name(None), PresetSource::None);
        assert_eq!(
            PresetSource::from_name(Some("library:hip hop:3")),
            PresetSource::Library {
                style: "hip hop".into(),
                index: 3
            }
        );
        assert_eq!(
            PresetSource::from_name(Some("/srv/media/a.wav")),
            PresetSource::File {
                path: "/srv/media/a.wav".into()
            }
        );
        assert_eq!(
            PresetSource::from_name(Some("take.wav")),
            PresetSource::Upload {
                name: "take.wav".into()
            }
        );
    }

    #[test]
    fn session_files_are_told_from_presets() {
        assert!(is_session_file(
            br#"{"type":"header","version":1,"config":{}}"#
        ));
        assert!(!is_session_file(br#"{"preset_version":1}"#));
    }
}
