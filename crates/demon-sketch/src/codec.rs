//! `SketchCodec`: the sketch backend's `Codec` (analysis encoder, synthesizer decoder).

use candle_core::{Device, Tensor};
use demon_engine::{Audio, Codec, EngineError, Result};

use crate::layout::{CHANNELS, HOP, SAMPLE_RATE};
use crate::{analysis, synth};

/// Audio ⇄ sketch latent.
pub struct SketchCodec {
    device: Device,
    /// Oscillator frames of the last windowed decode, read again by the next.
    oscillators: synth::OscCache,
}

impl SketchCodec {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            oscillators: synth::OscCache::default(),
        }
    }
}

impl SketchCodec {
    /// Oscillator frames kept for the next windowed decode.
    pub fn cached_oscillator_frames(&self) -> usize {
        self.oscillators.len()
    }
}

impl Default for SketchCodec {
    fn default() -> Self {
        Self::new(Device::Cpu)
    }
}

impl Codec for SketchCodec {
    fn sample_rate(&self) -> u32 {
        SAMPLE_RATE
    }
    fn hop_samples(&self) -> usize {
        HOP
    }
    fn latent_channels(&self) -> usize {
        CHANNELS
    }
    fn audio_channels(&self) -> usize {
        2
    }
    fn device(&self) -> &Device {
        &self.device
    }

    /// The sketch codec holds no state between calls: any instance gives the same audio.
    fn fork(&self) -> Option<Box<dyn Codec>> {
        Some(Box::new(Self::new(self.device.clone())))
    }

    fn encode(&mut self, audio: &Audio) -> Result<Tensor> {
        if audio.sample_rate != SAMPLE_RATE {
            return Err(EngineError::param(
                "audio",
                format!(
                    "sketch codec needs {SAMPLE_RATE} Hz audio, got {} Hz",
                    audio.sample_rate
                ),
            ));
        }
        let frames = audio.frames() / HOP;
        if frames == 0 {
            return Err(EngineError::param(
                "audio",
                format!("shorter than one latent frame ({HOP} samples)"),
            ));
        }
        let latent = analysis::analyze(&audio.channels);
        Ok(Tensor::from_vec(
            latent,
            (1, frames, CHANNELS),
            &self.device,
        )?)
    }

    fn decode(&mut self, latent: &Tensor, first_frame: i64) -> Result<Audio> {
        let n = latent.dim(1)?;
        self.decode_kept(latent, first_frame, 0..n)
    }

    fn decode_kept(
        &mut self,
        latent: &Tensor,
        first_frame: i64,
        kept: std::ops::Range<usize>,
    ) -> Result<Audio> {
        let (b, n, c) = latent.dims3()?;
        if b != 1 || c != CHANNELS {
            return Err(EngineError::shape(
                "sketch latent",
                format!("[1, N, {CHANNELS}]"),
                format!("{:?}", latent.dims()),
            ));
        }
        let v: Vec<f32> = latent.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(EngineError::param(
                "latent",
                format!("non-finite value at frame {}", i / CHANNELS),
            ));
        }
        demon_engine::check_kept(&kept, n)?;
        let [l, r] = synth::render_kept(&v, first_frame, kept.clone(), Some(&mut self.oscillators));
        debug_assert_eq!(l.len(), kept.len() * HOP);
        Audio::new(SAMPLE_RATE, vec![l, r])
    }

    fn name(&self) -> &str {
        "sketch"
    }
}
