//! `SketchConditioner`: prompt → conditioning for the sketch denoiser, and a reference's
//! structure → context.
//!
//! The conditioning is one token of [`TOKEN_WIDTH`] numbers: the style probabilities, tempo,
//! key and mood preferences, and an optional timbre: the voice parameters of a reference (the
//! time means of its [`TIMBRE_CHANNELS`]: levels, brightness, lead waveform, reverb, width,
//! pump), stored premultiplied by their weight. Lerping two conditionings (the engine's prompt
//! crossfade, the live session's timbre fader) mixes the style priors, which is exactly a prompt
//! blend for a mixture model, and scales the timbre's weight, which is exactly a timbre fader:
//! the denoiser plays its library with the voice moved that far toward the reference's.
//!
//! The context is the structure of a reference: its rhythm and harmony channels
//! ([`STRUCTURE_CHANNELS`]: chord, bass and lead pitch classes, note and drum onsets), looped
//! to the song's length and scaled by the strength; the denoiser favours library material that
//! agrees with it (DEMON's structure hint, ACE-Step's FSQ hint of the reference).

use candle_core::{Device, Tensor};
use demon_engine::{
    Conditioner, Conditioning, EngineError, Prompt, PromptUse, Result, SourceHints,
};

use crate::layout::*;
use crate::style::{STYLE_COUNT, Style, parse_key, read_prompt};

/// The latent channels that describe a voice rather than notes and rhythm.
pub const TIMBRE_CHANNELS: [usize; 11] = [
    PAD_LEVEL,
    BASS_LEVEL,
    LEAD_LEVEL,
    DRUM_LEVEL,
    PAD_BRIGHT,
    BASS_BRIGHT,
    LEAD_SHAPE,
    STAB_LEVEL,
    REVERB,
    WIDTH,
    PUMP,
];

/// The latent channels that carry rhythm and harmony: the structure a reference lends.
pub const STRUCTURE_CHANNELS: [usize; 44] = structure_channels();

const fn structure_channels() -> [usize; 44] {
    let mut out = [0usize; 44];
    let mut i = 0;
    while i < LEAD_OCTAVE {
        out[i] = i; // chord, bass and lead pitch classes
        i += 1;
    }
    let onsets = [
        BASS_ON.onset,
        LEAD_ON.onset,
        KICK.onset,
        SNARE.onset,
        HAT.onset,
        OPEN_HAT.onset,
        CLAP.onset,
        STAB.onset,
    ];
    let mut k = 0;
    while k < onsets.len() {
        out[i + k] = onsets[k];
        k += 1;
    }
    out
}

/// Width of the conditioning token.
pub const TOKEN_WIDTH: usize = TIMBRE_VALUES + TIMBRE_CHANNELS.len();
const BPM: usize = STYLE_COUNT;
const TONIC: usize = STYLE_COUNT + 1;
const MINOR: usize = STYLE_COUNT + 2;
const BRIGHT: usize = STYLE_COUNT + 3;
const ENERGY: usize = STYLE_COUNT + 4;
const VALID: usize = STYLE_COUNT + 5;
/// Weight of the timbre (0 = none).
const TIMBRE_WEIGHT: usize = STYLE_COUNT + 6;
/// First of the timbre values (weight × reference mean per timbre channel).
const TIMBRE_VALUES: usize = 16;

/// A reference's voice and how strongly it applies.
#[derive(Clone, Debug, PartialEq)]
pub struct Timbre {
    /// In (0, 1].
    pub weight: f32,
    /// Time mean of each of the reference's [`TIMBRE_CHANNELS`].
    pub voice: [f32; TIMBRE_CHANNELS.len()],
}

impl Timbre {
    /// The voice of a `[T][CHANNELS]` latent, at full weight.
    pub fn of_latent(latent: &[f32]) -> Result<Self> {
        let frames = latent.len() / CHANNELS;
        if frames == 0 || !latent.len().is_multiple_of(CHANNELS) {
            return Err(EngineError::param(
                "timbre reference",
                format!(
                    "needs [T, {CHANNELS}] with T ≥ 1, got {} values",
                    latent.len()
                ),
            ));
        }
        let mut voice = [0f32; TIMBRE_CHANNELS.len()];
        for (v, &c) in voice.iter_mut().zip(&TIMBRE_CHANNELS) {
            let sum: f64 = (0..frames).map(|f| latent[f * CHANNELS + c] as f64).sum();
            *v = (sum / frames as f64) as f32;
        }
        if voice.iter().any(|v| !v.is_finite()) {
            return Err(EngineError::param("timbre reference", "non-finite values"));
        }
        Ok(Self { weight: 1.0, voice })
    }
}

/// The decoded meaning of a sketch conditioning.
#[derive(Clone, Debug, PartialEq)]
pub struct SketchCondition {
    pub style_weights: [f32; STYLE_COUNT],
    pub bpm: f32,
    pub tonic: u8,
    pub minor: bool,
    pub brightness: f32,
    pub energy: f32,
    /// A reference's voice, when the conditioning carries one.
    pub timbre: Option<Timbre>,
}

impl SketchCondition {
    /// Read the conditioning the way the denoiser does.
    pub fn from_states(values: &[f32]) -> Result<Self> {
        if values.len() < TIMBRE_VALUES || values[VALID] < 0.5 {
            return Err(EngineError::Backend("not a sketch conditioning".into()));
        }
        let mut w = [0f32; STYLE_COUNT];
        w.copy_from_slice(&values[..STYLE_COUNT]);
        let sum: f32 = w.iter().map(|x| x.max(0.0)).sum();
        let w = if sum > 0.0 {
            w.map(|x| x.max(0.0) / sum)
        } else {
            [1.0 / STYLE_COUNT as f32; STYLE_COUNT]
        };
        Ok(Self {
            style_weights: w,
            bpm: (values[BPM] * 100.0 * 100.0).round() / 100.0,
            tonic: ((values[TONIC] * 12.0).round() as i64).rem_euclid(12) as u8,
            minor: values[MINOR] >= 0.5,
            brightness: values[BRIGHT].clamp(-1.0, 1.0),
            energy: values[ENERGY].clamp(-1.0, 1.0),
            timbre: match values.get(TIMBRE_WEIGHT) {
                Some(&w) if w > 0.0 && values.len() >= TOKEN_WIDTH => {
                    let mut voice = [0f32; TIMBRE_CHANNELS.len()];
                    for (i, v) in voice.iter_mut().enumerate() {
                        *v = (values[TIMBRE_VALUES + i] / w).clamp(-1.0, 1.0);
                    }
                    Some(Timbre {
                        weight: w.min(1.0),
                        voice,
                    })
                }
                _ => None,
            },
        })
    }

    pub fn to_states(&self) -> Vec<f32> {
        let mut v = vec![0f32; TOKEN_WIDTH];
        v[..STYLE_COUNT].copy_from_slice(&self.style_weights);
        v[BPM] = self.bpm / 100.0;
        v[TONIC] = self.tonic as f32 / 12.0;
        v[MINOR] = if self.minor { 1.0 } else { 0.0 };
        v[BRIGHT] = self.brightness;
        v[ENERGY] = self.energy;
        v[VALID] = 1.0;
        if let Some(t) = &self.timbre {
            v[TIMBRE_WEIGHT] = t.weight;
            for (i, x) in t.voice.iter().enumerate() {
                v[TIMBRE_VALUES + i] = t.weight * x;
            }
        }
        v
    }

    pub fn to_conditioning(&self, device: &Device) -> Result<Conditioning> {
        Conditioning::new(Tensor::from_vec(
            self.to_states(),
            (1, 1, TOKEN_WIDTH),
            device,
        )?)
    }

    /// The most likely style.
    pub fn dominant_style(&self) -> Style {
        let i = self
            .style_weights
            .iter()
            .enumerate()
            .fold(
                (0, f32::MIN),
                |a, (i, w)| if *w > a.1 { (i, *w) } else { a },
            )
            .0;
        Style::from_index(i).unwrap_or(Style::House)
    }
}

/// Prompt → sketch conditioning; structure latent → context.
pub struct SketchConditioner {
    device: Device,
}

impl SketchConditioner {
    pub fn new(device: Device) -> Self {
        Self { device }
    }

    /// The prompt as the sketch reads it (tempo and key resolved).
    pub fn read(&self, prompt: &Prompt) -> Result<SketchCondition> {
        prompt.validate()?;
        let r = read_prompt(&prompt.tags);
        let mut c = SketchCondition {
            style_weights: r.style_weights,
            bpm: 0.0,
            tonic: 9,
            minor: true,
            brightness: r.brightness,
            energy: r.energy,
            timbre: None,
        };
        let dominant = c.dominant_style();
        // The prompt's field, then its words, then what the source's analysis measured.
        c.bpm = prompt
            .bpm
            .or(r.bpm)
            .or(SourceHints::bpm(prompt))
            .unwrap_or(dominant.default_bpm());
        let key = match &prompt.key {
            Some(k) => Some(parse_key(k).ok_or_else(|| {
                EngineError::param(
                    "key",
                    format!("`{k}` is not a key (for example \"A minor\", \"F# major\")"),
                )
            })?),
            None => r
                .key
                .or_else(|| SourceHints::key(prompt).and_then(parse_key)),
        };
        (c.tonic, c.minor) = key.unwrap_or((9, dominant.default_minor()));
        Ok(c)
    }
}

impl Default for SketchConditioner {
    fn default() -> Self {
        Self::new(Device::Cpu)
    }
}

/// Pitch-class names for keys as the sketch reports them.
const PITCH_NAMES: [&str; 12] = [
    "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
];

impl Conditioner for SketchConditioner {
    fn condition(&mut self, prompt: &Prompt) -> Result<Conditioning> {
        self.read(prompt)?.to_conditioning(&self.device)
    }

    /// The styles the prompt selects (by weight), the tempo and key it resolves to, and the
    /// words the sketch did not understand: a prompt without a style word plays a mix of every
    /// style, which the fallback note says.
    fn prompt_use(&self, prompt: &Prompt) -> Option<PromptUse> {
        let c = self.read(prompt).ok()?;
        let r = read_prompt(&prompt.tags);
        let mut styles: Vec<(f32, Style)> = Style::ALL
            .iter()
            .map(|s| (r.style_weights[s.index()], *s))
            .filter(|(w, _)| *w > 0.0)
            .collect();
        styles.sort_by(|a, b| b.0.total_cmp(&a.0));
        let style = if r.unrecognised {
            "a mix of every style".to_string()
        } else {
            styles
                .iter()
                .map(|(_, s)| s.name())
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let words = r
            .unknown_words
            .iter()
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let fallback = match (r.unrecognised, words.is_empty()) {
            (false, true) => None,
            (false, false) => Some(format!("not understood: {words} (ignored)")),
            (true, true) => Some("no style word: playing a mix of every style".to_string()),
            (true, false) => Some(format!(
                "no style word understood ({words}): playing a mix of every style"
            )),
        };
        Some(PromptUse {
            style,
            bpm: Some(c.bpm),
            key: Some(format!(
                "{} {}",
                PITCH_NAMES[c.tonic as usize % 12],
                if c.minor { "minor" } else { "major" }
            )),
            fallback,
        })
    }

    /// The prompt's conditioning with the voice of `reference` (`[1, T, C]`) at full weight;
    /// the engine's lerp toward it from the plain conditioning is the timbre strength.
    fn condition_with_timbre(
        &mut self,
        prompt: &Prompt,
        reference: &Tensor,
    ) -> Result<Conditioning> {
        let (b, _, c) = reference.dims3()?;
        if b != 1 || c != CHANNELS {
            return Err(EngineError::shape(
                "timbre reference latent",
                format!("[1, T, {CHANNELS}]"),
                format!("{:?}", reference.dims()),
            ));
        }
        let values: Vec<f32> = reference
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        let mut cond = self.read(prompt)?;
        cond.timbre = Some(Timbre::of_latent(&values)?);
        cond.to_conditioning(&self.device)
    }

    /// Uniform over styles, same tempo, key and voice: "any music" (played with the same
    /// timbre, so guidance steers the style and leaves the voice alone).
    fn null_condition(&mut self, like: &Conditioning) -> Result<Conditioning> {
        let v: Vec<f32> = like.states.flatten_all()?.to_vec1()?;
        let mut c = SketchCondition::from_states(&v)?;
        c.style_weights = [1.0 / STYLE_COUNT as f32; STYLE_COUNT];
        c.brightness = 0.0;
        c.energy = 0.0;
        c.to_conditioning(&self.device)
    }

    fn context_channels(&self) -> usize {
        CHANNELS
    }

    /// `strength ·` the rhythm and harmony channels of `structure` (`[1, T, C]`, any T ≥ 1,
    /// looped to `frames`), zero elsewhere and when neutral: the denoiser favours library
    /// material that agrees with it.
    fn context(
        &mut self,
        structure: Option<&Tensor>,
        frames: usize,
        strength: f32,
    ) -> Result<Tensor> {
        if !(strength.is_finite() && (0.0..=1.0).contains(&strength)) {
            return Err(EngineError::param(
                "structure_strength",
                format!("{strength} is outside [0, 1]"),
            ));
        }
        match structure {
            Some(s) if strength > 0.0 => {
                let (b, n, c) = s.dims3()?;
                if b != 1 || c != CHANNELS || n == 0 {
                    return Err(EngineError::shape(
                        "structure latent",
                        format!("[1, T ≥ 1, {CHANNELS}]"),
                        format!("{:?}", s.dims()),
                    ));
                }
                let values: Vec<f32> = s.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
                let mut ctx = vec![0f32; frames * CHANNELS];
                for f in 0..frames {
                    let from = (f % n) * CHANNELS;
                    for &ch in &STRUCTURE_CHANNELS {
                        ctx[f * CHANNELS + ch] = strength * values[from + ch];
                    }
                }
                Ok(Tensor::from_vec(ctx, (1, frames, CHANNELS), &self.device)?)
            }
            _ => Ok(Tensor::zeros(
                (1, frames, CHANNELS),
                candle_core::DType::F32,
                &self.device,
            )?),
        }
    }

    fn name(&self) -> &str {
        "sketch"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_use_says_what_plays_and_what_was_not_understood() {
        let c = SketchConditioner::default();
        let u = c.prompt_use(&Prompt::tags("jazz piano trio")).unwrap();
        assert_eq!(u.style, "funk", "jazz is a funk word");
        assert_eq!(u.bpm, Some(108.0));
        assert_eq!(u.key.as_deref(), Some("A major"));
        assert_eq!(
            u.fallback.as_deref(),
            Some("not understood: `piano`, `trio` (ignored)")
        );
        let u = c.prompt_use(&Prompt::tags("polka")).unwrap();
        assert_eq!(u.style, "a mix of every style");
        assert_eq!((u.bpm, u.key.as_deref()), (Some(124.0), Some("A minor")));
        assert_eq!(
            u.fallback.as_deref(),
            Some("no style word understood (`polka`): playing a mix of every style")
        );
        let u = c
            .prompt_use(&Prompt {
                tags: "techno, ambient pads".into(),
                bpm: Some(140.0),
                key: Some("F minor".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(u.style, "ambient + techno");
        assert_eq!((u.bpm, u.key.as_deref()), (Some(140.0), Some("F minor")));
        assert_eq!(u.fallback, None);
    }

    #[test]
    fn a_source_hint_is_used_only_where_the_prompt_names_nothing() {
        let c = SketchConditioner::default();
        let hints = Some(SourceHints {
            bpm: Some(101.0),
            key: Some("D minor".into()),
        });
        let with = |tags: &str, bpm: Option<f32>| Prompt {
            tags: tags.into(),
            bpm,
            hints: hints.clone(),
            ..Default::default()
        };
        let used = |p: Prompt| {
            let u = c.prompt_use(&p).unwrap();
            (u.bpm, u.key)
        };
        // Nothing named: the measured tempo and key play (house would be 124, A minor).
        assert_eq!(
            used(with("house", None)),
            (Some(101.0), Some("D minor".into()))
        );
        // The prompt's words win, then its field.
        assert_eq!(
            used(with("house, 130 bpm, F major", None)),
            (Some(130.0), Some("F major".into()))
        );
        assert_eq!(
            used(with("house, 130 bpm", Some(90.0))),
            (Some(90.0), Some("D minor".into()))
        );
        // The hint changes the conditioning itself, not only the report.
        let a = c.read(&with("house", None)).unwrap();
        let b = c.read(&Prompt::tags("house")).unwrap();
        assert_eq!((a.bpm, b.bpm), (101.0, 124.0));
        assert_eq!((a.tonic, a.minor), (2, true));
    }
}
