//! `SketchConditioner`: prompt → conditioning for the sketch denoiser.
//!
//! The conditioning is one token of [`TOKEN_WIDTH`] numbers: the style probabilities, tempo,
//! key and mood preferences. Lerping two conditionings (the engine's prompt crossfade) mixes the
//! style priors, which is exactly a prompt blend for a mixture model.

use candle_core::{Device, Tensor};
use demon_engine::{Conditioner, Conditioning, EngineError, Prompt, Result};

use crate::layout::CHANNELS;
use crate::style::{STYLE_COUNT, Style, parse_key, read_prompt};

/// Width of the conditioning token.
pub const TOKEN_WIDTH: usize = 16;
const BPM: usize = STYLE_COUNT;
const TONIC: usize = STYLE_COUNT + 1;
const MINOR: usize = STYLE_COUNT + 2;
const BRIGHT: usize = STYLE_COUNT + 3;
const ENERGY: usize = STYLE_COUNT + 4;
const VALID: usize = STYLE_COUNT + 5;

/// The decoded meaning of a sketch conditioning.
#[derive(Clone, Debug, PartialEq)]
pub struct SketchCondition {
    pub style_weights: [f32; STYLE_COUNT],
    pub bpm: f32,
    pub tonic: u8,
    pub minor: bool,
    pub brightness: f32,
    pub energy: f32,
}

impl SketchCondition {
    /// Read the conditioning the way the denoiser does.
    pub fn from_states(values: &[f32]) -> Result<Self> {
        if values.len() < TOKEN_WIDTH || values[VALID] < 0.5 {
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
        };
        let dominant = c.dominant_style();
        c.bpm = prompt.bpm.or(r.bpm).unwrap_or(dominant.default_bpm());
        let key = match &prompt.key {
            Some(k) => Some(parse_key(k).ok_or_else(|| {
                EngineError::param(
                    "key",
                    format!("`{k}` is not a key (for example \"A minor\", \"F# major\")"),
                )
            })?),
            None => r.key,
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

impl Conditioner for SketchConditioner {
    fn condition(&mut self, prompt: &Prompt) -> Result<Conditioning> {
        self.read(prompt)?.to_conditioning(&self.device)
    }

    /// Uniform over styles, same tempo and key: "any music".
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

    /// `strength · structure`, zero when neutral: the denoiser favours library material that
    /// correlates with it.
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
                if s.dims() != [1, frames, CHANNELS] {
                    return Err(EngineError::shape(
                        "structure latent",
                        format!("[1, {frames}, {CHANNELS}]"),
                        format!("{:?}", s.dims()),
                    ));
                }
                Ok(s.affine(strength as f64, 0.0)?)
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
