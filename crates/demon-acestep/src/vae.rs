//! The Oobleck VAE (diffusers `AutoencoderOobleck`, acestep.md §1.9): Snake activations with
//! log-scale α/β, weight-normalised convolutions (folded once at load; a ConvTranspose1d's gain is
//! per *input* channel), residual units with dilations 1/3/9, strided encoder blocks and
//! transposed-conv decoder blocks. The encoder returns the deterministic mean (`mode()`), not a
//! sample.
//!
//! ConvTranspose1d runs with padding 0 and the output is trimmed by the padding on both sides:
//! identical values, and candle's padding-0 path (col2im) is much faster than its general path.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::config::VaeConfig;
use crate::error::{AceStepError, Result};
use crate::nn::TensorSource;

/// Snake: `x + 1/(β + 1e−9) · sin²(α·x)` with `α = exp(alpha)`, `β = exp(beta)` per channel.
/// A single-pass CPU kernel: the composed version makes five passes over the largest tensors
/// of the whole pipeline.
#[derive(Clone, Debug)]
pub struct Snake {
    alpha: Vec<f32>,
    inv_beta: Vec<f32>,
}

impl Snake {
    fn load(src: &dyn TensorSource, name: &str, channels: usize) -> Result<Self> {
        let a: Vec<f32> = src
            .tensor(&format!("{name}.alpha"), &[1, channels, 1])?
            .flatten_all()?
            .to_vec1()?;
        let b: Vec<f32> = src
            .tensor(&format!("{name}.beta"), &[1, channels, 1])?
            .flatten_all()?
            .to_vec1()?;
        Ok(Self {
            alpha: a.iter().map(|v| v.exp()).collect(),
            inv_beta: b.iter().map(|v| 1.0 / (v.exp() + 1e-9)).collect(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1_no_bwd(self)?)
    }
}

impl CustomOp1 for Snake {
    fn name(&self) -> &'static str {
        "snake1d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("snake1d: only f32 is supported")
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("snake1d: input is not contiguous".into()))?;
        let data = &data[start..end];
        let dims = layout.shape().dims();
        let (c, l) = match dims {
            [_, c, l] => (*c, *l),
            _ => candle_core::bail!("snake1d: expected [B, C, L], got {dims:?}"),
        };
        if c != self.alpha.len() {
            candle_core::bail!("snake1d: {c} channels, parameters for {}", self.alpha.len())
        }
        let mut out = vec![0f32; data.len()];
        if data.is_empty() || l == 0 {
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        let rows = data.len() / l.max(1);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(rows.max(1));
        let per = rows.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            for (chunk_idx, (dst, src)) in out
                .chunks_mut(per * l)
                .zip(data.chunks(per * l))
                .enumerate()
            {
                scope.spawn(move || {
                    for (r, (d, s)) in dst.chunks_mut(l).zip(src.chunks(l)).enumerate() {
                        let ch = (chunk_idx * per + r) % c;
                        let (a, ib) = (self.alpha[ch], self.inv_beta[ch]);
                        for (o, &x) in d.iter_mut().zip(s) {
                            let sn = (a * x).sin();
                            *o = x + ib * (sn * sn);
                        }
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `w = g · v / ‖v‖`, the norm over every dimension but 0.
fn fold_weight_norm(src: &dyn TensorSource, name: &str, v_shape: &[usize]) -> Result<Tensor> {
    let v = src.tensor(&format!("{name}.weight_v"), v_shape)?;
    let g = src.tensor(&format!("{name}.weight_g"), &[v_shape[0], 1, 1])?;
    let norm = v.sqr()?.sum_keepdim((1, 2))?.sqrt()?;
    Ok(v.broadcast_mul(&g.broadcast_div(&norm)?)?)
}

/// A weight-normalised Conv1d.
#[derive(Clone, Debug)]
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    fn load(
        src: &dyn TensorSource,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            weight: fold_weight_norm(src, name, &[cout, cin, k])?,
            bias: if bias {
                Some(
                    src.tensor(&format!("{name}.bias"), &[cout])?
                        .reshape((1, cout, 1))?,
                )
            } else {
                None
            },
            padding,
            stride,
            dilation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv1d(&self.weight, self.padding, self.stride, self.dilation, 1)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// A weight-normalised ConvTranspose1d (kernel 2s, stride s, padding ⌈s/2⌉), run with padding 0
/// and trimmed.
#[derive(Clone, Debug)]
pub struct ConvTranspose {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl ConvTranspose {
    fn load(
        src: &dyn TensorSource,
        name: &str,
        cin: usize,
        cout: usize,
        stride: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: fold_weight_norm(src, name, &[cin, cout, 2 * stride])?,
            bias: src
                .tensor(&format!("{name}.bias"), &[cout])?
                .reshape((1, cout, 1))?,
            stride,
            padding: stride.div_ceil(2),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv_transpose1d(&self.weight, 0, 0, self.stride, 1, 1)?;
        let full = y.dim(2)?;
        let y = y.narrow(2, self.padding, full - 2 * self.padding)?;
        Ok(y.broadcast_add(&self.bias)?)
    }
}

/// `x + conv2(snake2(conv1(snake1(x))))`, conv1 kernel 7 with dilation d.
#[derive(Clone, Debug)]
pub struct ResidualUnit {
    snake1: Snake,
    conv1: Conv,
    snake2: Snake,
    conv2: Conv,
}

impl ResidualUnit {
    fn load(src: &dyn TensorSource, name: &str, c: usize, dilation: usize) -> Result<Self> {
        Ok(Self {
            snake1: Snake::load(src, &format!("{name}.snake1"), c)?,
            conv1: Conv::load(
                src,
                &format!("{name}.conv1"),
                c,
                c,
                7,
                1,
                3 * dilation,
                dilation,
                true,
            )?,
            snake2: Snake::load(src, &format!("{name}.snake2"), c)?,
            conv2: Conv::load(src, &format!("{name}.conv2"), c, c, 1, 1, 0, 1, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(&self.snake1.forward(x)?)?;
        let y = self.conv2.forward(&self.snake2.forward(&y)?)?;
        Ok((x + y)?)
    }
}

fn residual_units(src: &dyn TensorSource, name: &str, c: usize) -> Result<[ResidualUnit; 3]> {
    Ok([
        ResidualUnit::load(src, &format!("{name}.res_unit1"), c, 1)?,
        ResidualUnit::load(src, &format!("{name}.res_unit2"), c, 3)?,
        ResidualUnit::load(src, &format!("{name}.res_unit3"), c, 9)?,
    ])
}

struct DecoderBlock {
    snake: Snake,
    conv_t: ConvTranspose,
    res: [ResidualUnit; 3],
}

struct EncoderBlock {
    res: [ResidualUnit; 3],
    snake: Snake,
    conv: Conv,
}

/// Latent `[B, C, T]` → audio `[B, channels, T·hop]`.
pub struct VaeDecoder {
    conv1: Conv,
    blocks: Vec<DecoderBlock>,
    snake1: Snake,
    conv2: Conv,
}

impl VaeDecoder {
    pub fn load(src: &dyn TensorSource, cfg: &VaeConfig) -> Result<Self> {
        let ch = cfg.decoder_channels;
        let mults: Vec<usize> = std::iter::once(1)
            .chain(cfg.channel_multiples.iter().copied())
            .collect();
        let n = cfg.downsampling_ratios.len();
        let strides: Vec<usize> = cfg.downsampling_ratios.iter().rev().copied().collect();
        let top = ch * mults[n];
        let mut blocks = Vec::with_capacity(n);
        for (i, &s) in strides.iter().enumerate() {
            let (cin, cout) = (ch * mults[n - i], ch * mults[n - i - 1]);
            let name = format!("decoder.block.{i}");
            blocks.push(DecoderBlock {
                snake: Snake::load(src, &format!("{name}.snake1"), cin)?,
                conv_t: ConvTranspose::load(src, &format!("{name}.conv_t1"), cin, cout, s)?,
                res: residual_units(src, &name, cout)?,
            });
        }
        Ok(Self {
            conv1: Conv::load(
                src,
                "decoder.conv1",
                cfg.decoder_input_channels,
                top,
                7,
                1,
                3,
                1,
                true,
            )?,
            blocks,
            snake1: Snake::load(src, "decoder.snake1", ch)?,
            conv2: Conv::load(
                src,
                "decoder.conv2",
                ch,
                cfg.audio_channels,
                7,
                1,
                3,
                1,
                false,
            )?,
        })
    }

    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let mut h = self.conv1.forward(latents)?;
        for b in &self.blocks {
            h = b.conv_t.forward(&b.snake.forward(&h)?)?;
            for r in &b.res {
                h = r.forward(&h)?;
            }
        }
        self.conv2.forward(&self.snake1.forward(&h)?)
    }
}

/// Audio `[B, channels, N]` → latent mean `[B, C, N/hop]`.
pub struct VaeEncoder {
    conv1: Conv,
    blocks: Vec<EncoderBlock>,
    snake1: Snake,
    conv2: Conv,
    latent_channels: usize,
}

impl VaeEncoder {
    pub fn load(src: &dyn TensorSource, cfg: &VaeConfig) -> Result<Self> {
        let ch = cfg.encoder_hidden_size;
        let mults: Vec<usize> = std::iter::once(1)
            .chain(cfg.channel_multiples.iter().copied())
            .collect();
        let mut blocks = Vec::with_capacity(cfg.downsampling_ratios.len());
        for (i, &s) in cfg.downsampling_ratios.iter().enumerate() {
            let (cin, cout) = (ch * mults[i], ch * mults[i + 1]);
            let name = format!("encoder.block.{i}");
            blocks.push(EncoderBlock {
                res: residual_units(src, &name, cin)?,
                snake: Snake::load(src, &format!("{name}.snake1"), cin)?,
                conv: Conv::load(
                    src,
                    &format!("{name}.conv1"),
                    cin,
                    cout,
                    2 * s,
                    s,
                    s.div_ceil(2),
                    1,
                    true,
                )?,
            });
        }
        let top = ch * mults[cfg.downsampling_ratios.len()];
        if !ch.is_multiple_of(2) {
            return Err(AceStepError::input(
                "encoder_hidden_size must be even (mean and scale halves)",
            ));
        }
        Ok(Self {
            conv1: Conv::load(
                src,
                "encoder.conv1",
                cfg.audio_channels,
                ch,
                7,
                1,
                3,
                1,
                true,
            )?,
            blocks,
            snake1: Snake::load(src, "encoder.snake1", top)?,
            conv2: Conv::load(src, "encoder.conv2", top, ch, 3, 1, 1, 1, true)?,
            latent_channels: ch / 2,
        })
    }

    /// The posterior mean.
    pub fn forward(&self, audio: &Tensor) -> Result<Tensor> {
        let mut h = self.conv1.forward(audio)?;
        for b in &self.blocks {
            for r in &b.res {
                h = r.forward(&h)?;
            }
            h = b.conv.forward(&b.snake.forward(&h)?)?;
        }
        let h = self.conv2.forward(&self.snake1.forward(&h)?)?;
        Ok(h.narrow(1, 0, self.latent_channels)?)
    }
}
