//! The Oobleck VAE as demon-engine's `Codec` ([`AceStepCodec`]): tiled decode of long windows,
//! encode of 48 kHz audio to the posterior mean.

use candle_core::{Device, Tensor};
use demon_engine::{Audio, Codec, EngineError};

use crate::config::VaeConfig;
use crate::error::{AceStepError, Result};
use crate::nn::{RandomSource, TensorSource};
use crate::vae::{VaeDecoder, VaeEncoder};

/// The Oobleck VAE as a `demon_engine::Codec`.
pub struct AceStepCodec {
    decoder: VaeDecoder,
    encoder: Option<VaeEncoder>,
    cfg: VaeConfig,
    device: Device,
    /// Decode windows longer than this many frames in tiles (bounds memory).
    pub tile_frames: usize,
    /// Frames of context decoded and discarded on each side of a tile.
    pub tile_overlap: usize,
}

impl AceStepCodec {
    pub fn from_source(
        src: &dyn TensorSource,
        cfg: &VaeConfig,
        with_encoder: bool,
    ) -> Result<Self> {
        crate::threads::apply();
        Ok(Self {
            decoder: VaeDecoder::load(src, cfg)?,
            encoder: if with_encoder {
                Some(VaeEncoder::load(src, cfg)?)
            } else {
                None
            },
            cfg: cfg.clone(),
            device: src.device().clone(),
            tile_frames: 512,
            tile_overlap: 64,
        })
    }

    pub fn random(cfg: &VaeConfig, seed: u64, device: &Device, with_encoder: bool) -> Result<Self> {
        Self::from_source(
            &RandomSource {
                seed,
                device: device.clone(),
            },
            cfg,
            with_encoder,
        )
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Bytes of the decoder's convolution weights (the packed panels on the CPU).
    pub fn decoder_weight_bytes(&self) -> usize {
        self.decoder.weight_bytes()
    }

    /// Decoder forward on `[B, C, T]` latents (no tiling): `[B, channels, T·hop]`.
    pub fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
        self.decoder.forward(latents)
    }

    /// Encoder mean on `[B, channels, N]` audio: `[B, C, N/hop]`.
    pub fn encode_raw(&self, audio: &Tensor) -> Result<Tensor> {
        self.encoder
            .as_ref()
            .ok_or_else(|| AceStepError::input("this codec was built without the VAE encoder"))?
            .forward(audio)
    }

    /// `[1, C, N]` latents → `[1, channels, N·hop]`, in tiles of `tile_frames` with
    /// `tile_overlap` frames of discarded context on each side when N is larger.
    pub fn decode_tiled(&self, latents: &Tensor) -> Result<Tensor> {
        let n = latents.dim(2)?;
        if n <= self.tile_frames || self.tile_frames <= 2 * self.tile_overlap {
            return self.decoder.forward(latents);
        }
        let hop = self.cfg.hop();
        let core = self.tile_frames - 2 * self.tile_overlap;
        let mut parts = Vec::new();
        let mut s = 0;
        while s < n {
            let e = (s + core).min(n);
            let a = s.saturating_sub(self.tile_overlap);
            let b = (e + self.tile_overlap).min(n);
            let audio = self.decoder.forward(&latents.narrow(2, a, b - a)?)?;
            parts.push(audio.narrow(2, (s - a) * hop, (e - s) * hop)?);
            s = e;
        }
        Ok(Tensor::cat(&parts, 2)?)
    }
}

impl Codec for AceStepCodec {
    fn sample_rate(&self) -> u32 {
        self.cfg.sampling_rate
    }

    fn hop_samples(&self) -> usize {
        self.cfg.hop()
    }

    fn latent_channels(&self) -> usize {
        self.cfg.decoder_input_channels
    }

    fn audio_channels(&self) -> usize {
        self.cfg.audio_channels
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// Mono is duplicated to every channel; samples are clamped to [−1, 1]; the audio must be at
    /// the VAE's sample rate (resampling belongs to the caller).
    fn encode(&mut self, audio: &Audio) -> demon_engine::Result<Tensor> {
        if audio.sample_rate != self.cfg.sampling_rate {
            return Err(EngineError::param(
                "audio",
                format!(
                    "sample rate {} Hz, the VAE needs {} Hz",
                    audio.sample_rate, self.cfg.sampling_rate
                ),
            ));
        }
        let want = self.cfg.audio_channels;
        let chans: Vec<&Vec<f32>> = match audio.channels.len() {
            n if n == want => audio.channels.iter().collect(),
            1 => vec![&audio.channels[0]; want],
            n => {
                return Err(EngineError::param(
                    "audio",
                    format!("{n} channels, the VAE takes {want} (or mono)"),
                ));
            }
        };
        let hop = self.cfg.hop();
        let frames = audio.frames() / hop;
        if frames == 0 {
            return Err(EngineError::param(
                "audio",
                format!("shorter than one latent frame ({hop} samples)"),
            ));
        }
        let n = frames * hop;
        let mut data = Vec::with_capacity(want * n);
        for ch in chans {
            data.extend(ch[..n].iter().map(|x| {
                if x.is_finite() {
                    x.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            }));
        }
        let x = Tensor::from_vec(data, (1, want, n), &self.device)?;
        let z = self.encode_raw(&x)?;
        Ok(z.transpose(1, 2)?.contiguous()?)
    }

    fn decode(&mut self, latent: &Tensor, _first_frame: i64) -> demon_engine::Result<Audio> {
        let (b, _n, c) = latent.dims3()?;
        if b != 1 || c != self.cfg.decoder_input_channels {
            return Err(EngineError::shape(
                "latent window",
                format!("[1, N, {}]", self.cfg.decoder_input_channels),
                format!("{:?}", latent.dims()),
            ));
        }
        let audio = self.decode_tiled(&latent.transpose(1, 2)?.contiguous()?)?;
        let channels: Vec<Vec<f32>> = audio.squeeze(0)?.to_vec2()?;
        Audio::new(self.cfg.sampling_rate, channels)
    }

    fn name(&self) -> &str {
        "oobleck-vae"
    }
}
