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
use crate::conv::TimeConv;
use crate::error::{AceStepError, Result};
use crate::nn::TensorSource;

/// Snake: `x + 1/(β + 1e−9) · sin²(α·x)` with `α = exp(alpha)`, `β = exp(beta)` per channel.
/// A single-pass CPU kernel: the composed version makes five passes over the largest tensors
/// of the whole pipeline.
#[derive(Clone, Debug)]
pub struct Snake {
    alpha: Vec<f32>,
    inv_beta: Vec<f32>,
    /// `[L, C]` input (the CPU fast path) instead of `[B, C, L]`.
    time_major: bool,
}

impl Snake {
    fn load(src: &dyn TensorSource, name: &str, channels: usize, time_major: bool) -> Result<Self> {
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
            time_major,
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
        let (c, l) = match (dims, self.time_major) {
            ([_, c, l], false) => (*c, *l),
            ([_, c], true) => (*c, *c),
            _ => candle_core::bail!("snake1d: unexpected input shape {dims:?}"),
        };
        if c != self.alpha.len() {
            candle_core::bail!("snake1d: {c} channels, parameters for {}", self.alpha.len())
        }
        let mut out = vec![0f32; data.len()];
        if data.is_empty() || l == 0 {
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        if self.time_major {
            // [L, C]: rows are time steps, the channel is the position within a row.
            let rows = data.len() / c;
            let threads = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(rows.max(1));
            let per = rows.div_ceil(threads.max(1)).max(1);
            std::thread::scope(|scope| {
                for (dst, src) in out.chunks_mut(per * c).zip(data.chunks(per * c)) {
                    scope.spawn(move || {
                        for (d, s) in dst.chunks_mut(c).zip(src.chunks(c)) {
                            for (((o, &x), &a), &ib) in
                                d.iter_mut().zip(s).zip(&self.alpha).zip(&self.inv_beta)
                            {
                                let sn = (a * x).sin();
                                *o = x + ib * (sn * sn);
                            }
                        }
                    });
                }
            });
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

/// A weight-normalised Conv1d: channel-major on candle, or time-major GEMMs on the CPU.
#[derive(Clone, Debug)]
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
    time: Option<TimeConv>,
}

/// Conv hyper-parameters `(kernel, stride, padding, dilation)`.
#[derive(Clone, Copy, Debug)]
struct ConvSpec {
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
}

impl Conv {
    fn load(
        src: &dyn TensorSource,
        name: &str,
        (cin, cout): (usize, usize),
        spec: ConvSpec,
        bias: bool,
        time_major: bool,
    ) -> Result<Self> {
        let weight = fold_weight_norm(src, name, &[cout, cin, spec.k])?;
        let bias = if bias {
            Some(src.tensor(&format!("{name}.bias"), &[cout])?)
        } else {
            None
        };
        let time = if time_major {
            Some(TimeConv::conv(
                &weight,
                bias.as_ref(),
                spec.stride,
                spec.dilation,
                spec.padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias: bias.map(|b| b.reshape((1, cout, 1))).transpose()?,
            padding: spec.padding,
            stride: spec.stride,
            dilation: spec.dilation,
            time,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(t) = &self.time {
            return t.forward(x);
        }
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
    time: Option<TimeConv>,
}

impl ConvTranspose {
    fn load(
        src: &dyn TensorSource,
        name: &str,
        cin: usize,
        cout: usize,
        stride: usize,
        time_major: bool,
    ) -> Result<Self> {
        let weight = fold_weight_norm(src, name, &[cin, cout, 2 * stride])?;
        let bias = src.tensor(&format!("{name}.bias"), &[cout])?;
        let padding = stride.div_ceil(2);
        let time = if time_major {
            Some(TimeConv::conv_transpose(
                &weight,
                Some(&bias),
                stride,
                padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias: bias.reshape((1, cout, 1))?,
            stride,
            padding,
            time,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(t) = &self.time {
            return t.forward(x);
        }
        // One batch item at a time: candle 0.11.1's padding-0 (col2im) transposed convolution
        // gives wrong values for items after the first of a batch.
        let mut items = Vec::with_capacity(x.dim(0)?);
        for i in 0..x.dim(0)? {
            let y = x
                .narrow(0, i, 1)?
                .conv_transpose1d(&self.weight, 0, 0, self.stride, 1, 1)?;
            let full = y.dim(2)?;
            items.push(y.narrow(2, self.padding, full - 2 * self.padding)?);
        }
        Ok(Tensor::cat(&items, 0)?.broadcast_add(&self.bias)?)
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
    fn load(
        src: &dyn TensorSource,
        name: &str,
        c: usize,
        dilation: usize,
        tm: bool,
    ) -> Result<Self> {
        let k7 = ConvSpec {
            k: 7,
            stride: 1,
            padding: 3 * dilation,
            dilation,
        };
        let k1 = ConvSpec {
            k: 1,
            stride: 1,
            padding: 0,
            dilation: 1,
        };
        Ok(Self {
            snake1: Snake::load(src, &format!("{name}.snake1"), c, tm)?,
            conv1: Conv::load(src, &format!("{name}.conv1"), (c, c), k7, true, tm)?,
            snake2: Snake::load(src, &format!("{name}.snake2"), c, tm)?,
            conv2: Conv::load(src, &format!("{name}.conv2"), (c, c), k1, true, tm)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(&self.snake1.forward(x)?)?;
        let y = self.conv2.forward(&self.snake2.forward(&y)?)?;
        Ok((x + y)?)
    }
}

fn residual_units(
    src: &dyn TensorSource,
    name: &str,
    c: usize,
    tm: bool,
) -> Result<[ResidualUnit; 3]> {
    Ok([
        ResidualUnit::load(src, &format!("{name}.res_unit1"), c, 1, tm)?,
        ResidualUnit::load(src, &format!("{name}.res_unit2"), c, 3, tm)?,
        ResidualUnit::load(src, &format!("{name}.res_unit3"), c, 9, tm)?,
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

/// Run `f` on each batch item in time-major layout: `[B, C, L]` → per item `[L, C]` → back.
fn per_item_time_major(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let b = x.dim(0)?;
    let mut outs = Vec::with_capacity(b);
    for i in 0..b {
        let item = x.get(i)?.t()?.contiguous()?;
        outs.push(f(&item)?.t()?.contiguous()?);
    }
    Ok(Tensor::stack(&outs, 0)?)
}

/// Latent `[B, C, T]` → audio `[B, channels, T·hop]`.
pub struct VaeDecoder {
    conv1: Conv,
    blocks: Vec<DecoderBlock>,
    snake1: Snake,
    conv2: Conv,
    time_major: bool,
}

impl VaeDecoder {
    /// On the CPU the decoder runs time-major (faster); elsewhere on candle's convolutions.
    pub fn load(src: &dyn TensorSource, cfg: &VaeConfig) -> Result<Self> {
        Self::load_with_layout(src, cfg, src.device().is_cpu())
    }

    /// Choose the layout explicitly (`time_major` needs the CPU).
    pub fn load_with_layout(src: &dyn TensorSource, cfg: &VaeConfig, tm: bool) -> Result<Self> {
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
                snake: Snake::load(src, &format!("{name}.snake1"), cin, tm)?,
                conv_t: ConvTranspose::load(src, &format!("{name}.conv_t1"), cin, cout, s, tm)?,
                res: residual_units(src, &name, cout, tm)?,
            });
        }
        let k7 = ConvSpec {
            k: 7,
            stride: 1,
            padding: 3,
            dilation: 1,
        };
        Ok(Self {
            conv1: Conv::load(
                src,
                "decoder.conv1",
                (cfg.decoder_input_channels, top),
                k7,
                true,
                tm,
            )?,
            blocks,
            snake1: Snake::load(src, "decoder.snake1", ch, tm)?,
            conv2: Conv::load(
                src,
                "decoder.conv2",
                (ch, cfg.audio_channels),
                k7,
                false,
                tm,
            )?,
            time_major: tm,
        })
    }

    fn run(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv1.forward(x)?;
        for b in &self.blocks {
            h = b.conv_t.forward(&b.snake.forward(&h)?)?;
            for r in &b.res {
                h = r.forward(&h)?;
            }
        }
        self.conv2.forward(&self.snake1.forward(&h)?)
    }

    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        if self.time_major {
            per_item_time_major(latents, |x| self.run(x))
        } else {
            self.run(latents)
        }
    }
}

/// Audio `[B, channels, N]` → latent mean `[B, C, N/hop]`.
pub struct VaeEncoder {
    conv1: Conv,
    blocks: Vec<EncoderBlock>,
    snake1: Snake,
    conv2: Conv,
    latent_channels: usize,
    time_major: bool,
}

impl VaeEncoder {
    /// On the CPU the encoder runs time-major (faster); elsewhere on candle's convolutions.
    pub fn load(src: &dyn TensorSource, cfg: &VaeConfig) -> Result<Self> {
        Self::load_with_layout(src, cfg, src.device().is_cpu())
    }

    /// Choose the layout explicitly (`time_major` needs the CPU).
    pub fn load_with_layout(src: &dyn TensorSource, cfg: &VaeConfig, tm: bool) -> Result<Self> {
        let ch = cfg.encoder_hidden_size;
        if !ch.is_multiple_of(2) {
            return Err(AceStepError::input(
                "encoder_hidden_size must be even (mean and scale halves)",
            ));
        }
        let mults: Vec<usize> = std::iter::once(1)
            .chain(cfg.channel_multiples.iter().copied())
            .collect();
        let mut blocks = Vec::with_capacity(cfg.downsampling_ratios.len());
        for (i, &s) in cfg.downsampling_ratios.iter().enumerate() {
            let (cin, cout) = (ch * mults[i], ch * mults[i + 1]);
            let name = format!("encoder.block.{i}");
            let down = ConvSpec {
                k: 2 * s,
                stride: s,
                padding: s.div_ceil(2),
                dilation: 1,
            };
            blocks.push(EncoderBlock {
                res: residual_units(src, &name, cin, tm)?,
                snake: Snake::load(src, &format!("{name}.snake1"), cin, tm)?,
                conv: Conv::load(src, &format!("{name}.conv1"), (cin, cout), down, true, tm)?,
            });
        }
        let top = ch * mults[cfg.downsampling_ratios.len()];
        Ok(Self {
            conv1: Conv::load(
                src,
                "encoder.conv1",
                (cfg.audio_channels, ch),
                ConvSpec {
                    k: 7,
                    stride: 1,
                    padding: 3,
                    dilation: 1,
                },
                true,
                tm,
            )?,
            blocks,
            snake1: Snake::load(src, "encoder.snake1", top, tm)?,
            conv2: Conv::load(
                src,
                "encoder.conv2",
                (top, ch),
                ConvSpec {
                    k: 3,
                    stride: 1,
                    padding: 1,
                    dilation: 1,
                },
                true,
                tm,
            )?,
            latent_channels: ch / 2,
            time_major: tm,
        })
    }

    fn run(&self, audio: &Tensor) -> Result<Tensor> {
        let mut h = self.conv1.forward(audio)?;
        for b in &self.blocks {
            for r in &b.res {
                h = r.forward(&h)?;
            }
            h = b.conv.forward(&b.snake.forward(&h)?)?;
        }
        self.conv2.forward(&self.snake1.forward(&h)?)
    }

    /// The posterior mean.
    pub fn forward(&self, audio: &Tensor) -> Result<Tensor> {
        if self.time_major {
            let h = per_item_time_major(audio, |x| self.run(x))?;
            Ok(h.narrow(1, 0, self.latent_channels)?)
        } else {
            Ok(self.run(audio)?.narrow(1, 0, self.latent_channels)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::RandomSource;
    use candle_core::Device;

    /// The time-major CPU path and candle's channel-major path agree.
    #[test]
    fn both_layouts_agree() {
        let cfg = VaeConfig {
            encoder_hidden_size: 8,
            downsampling_ratios: vec![2, 4],
            channel_multiples: vec![1, 2],
            decoder_channels: 4,
            decoder_input_channels: 4,
            audio_channels: 2,
            sampling_rate: 200,
        };
        let src = RandomSource {
            seed: 5,
            device: Device::Cpu,
        };
        let lat = demon_engine::rng::normal_tensor(7, demon_engine::rng::NoiseStream::Initial, 2 * 4, 9, &Device::Cpu)
            .unwrap()
            .reshape((2, 4, 9))
            .unwrap();
        let a = VaeDecoder::load_with_layout(&src, &cfg, true)
            .unwrap()
            .forward(&lat)
            .unwrap();
        let b = VaeDecoder::load_with_layout(&src, &cfg, false)
            .unwrap()
            .forward(&lat)
            .unwrap();
        assert_eq!(a.dims(), &[2, 2, 72]);
        let d = (&a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "decoder {d}");
        let e1 = VaeEncoder::load_with_layout(&src, &cfg, true)
            .unwrap()
            .forward(&a)
            .unwrap();
        let e2 = VaeEncoder::load_with_layout(&src, &cfg, false)
            .unwrap()
            .forward(&a)
            .unwrap();
        assert_eq!(e1.dims(), &[2, 4, 9]);
        let d = (&e1 - &e2)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // The two layouts take different (equally valid) f32 summation orders; compare relative
        // to the output's scale.
        let scale = e1.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
        assert!(d / scale < 1e-5, "encoder {d} (scale {scale})");
    }
}
