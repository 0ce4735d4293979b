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
use crate::conv::{FusedResidual, TimeConv, set_len};
use crate::cpu::{self, SnakeParams};
use crate::error::{AceStepError, Result};
use crate::nn::{Params, TensorSource};

/// Snake: `x + 1/(β + 1e−9) · sin²(α·x)` with `α = exp(alpha)`, `β = exp(beta)` per channel.
/// On the CPU a single-pass vectorised kernel ([`SnakeParams`]; the composed version makes five
/// passes over the largest tensors of the whole pipeline); on other devices composed candle ops.
#[derive(Clone, Debug)]
pub struct Snake {
    params: SnakeParams,
    /// `[1, C, 1]` `α` and `1/(β + 1e−9)` for the composed (non-CPU) path.
    alpha: Tensor,
    inv_beta: Tensor,
    /// `[L, C]` input (the CPU fast path) instead of `[B, C, L]`.
    time_major: bool,
}

impl Snake {
    fn load(p: &Params<'_>, channels: usize, time_major: bool) -> Result<Self> {
        let a: Vec<f32> = p
            .get("alpha", &[1, channels, 1])?
            .flatten_all()?
            .to_vec1()?;
        let b: Vec<f32> = p.get("beta", &[1, channels, 1])?.flatten_all()?.to_vec1()?;
        let params = SnakeParams {
            alpha: a.iter().map(|v| v.exp()).collect(),
            inv_beta: b.iter().map(|v| 1.0 / (v.exp() + 1e-9)).collect(),
        };
        let dev = p.device();
        Ok(Self {
            alpha: Tensor::from_slice(&params.alpha, (1, channels, 1), dev)?,
            inv_beta: Tensor::from_slice(&params.inv_beta, (1, channels, 1), dev)?,
            params,
            time_major,
        })
    }

    pub fn params(&self) -> &SnakeParams {
        &self.params
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            return Ok(x.contiguous()?.apply_op1_no_bwd(self)?);
        }
        let s = x.broadcast_mul(&self.alpha)?.sin()?.sqr()?;
        Ok((x + s.broadcast_mul(&self.inv_beta)?)?)
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
        let c = self.params.channels();
        let mut out = vec![0f32; data.len()];
        match (dims, self.time_major) {
            ([_, ch], true) if *ch == c => {
                // [L, C]: rows are time steps, the channel is the position within a row.
                let p = &self.params;
                cpu::for_each_part(&mut out, c, |off, dst| {
                    p.apply(dst, &data[off..off + dst.len()]);
                });
            }
            ([_, ch, l], false) if *ch == c => {
                // [B, C, L]: one channel per row of L values.
                let (l, p) = (*l, &self.params);
                cpu::for_each_tile(
                    &mut out,
                    l.max(1),
                    || (),
                    |row, dst, _| {
                        let ch = row % c;
                        let src = &data[row * l..row * l + dst.len()];
                        cpu::snake_channel(dst, src, p.alpha[ch], p.inv_beta[ch]);
                    },
                );
            }
            _ => candle_core::bail!(
                "snake1d: input shape {dims:?} does not match {c} channels (time-major: {})",
                self.time_major
            ),
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `w = g · v / ‖v‖`, the norm over every dimension but 0.
fn fold_weight_norm(p: &Params<'_>, v_shape: &[usize]) -> Result<Tensor> {
    let v = p.get("weight_v", v_shape)?;
    let g = p.get("weight_g", &[v_shape[0], 1, 1])?;
    let norm = v.sqr()?.sum_keepdim((1, 2))?.sqrt()?;
    Ok(v.broadcast_mul(&g.broadcast_div(&norm)?)?)
}

/// A weight-normalised Conv1d: channel-major on candle, or a time-major window GEMM on the CPU
/// (only one of the two weight copies is kept).
#[derive(Clone, Debug)]
pub enum Conv {
    Candle {
        weight: Tensor,
        bias: Option<Tensor>,
        padding: usize,
        stride: usize,
        dilation: usize,
    },
    Time(TimeConv),
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
    /// Bytes of the weights (packed on the CPU).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Self::Time(t) => t.weight_bytes(),
            Self::Candle { weight, .. } => weight.elem_count() * 4,
        }
    }

    fn load(
        p: &Params<'_>,
        (cin, cout): (usize, usize),
        spec: ConvSpec,
        bias: bool,
        time_major: bool,
    ) -> Result<Self> {
        let weight = fold_weight_norm(p, &[cout, cin, spec.k])?;
        let bias = if bias {
            Some(p.get("bias", &[cout])?)
        } else {
            None
        };
        if time_major {
            return Ok(Self::Time(TimeConv::conv(
                &weight,
                bias.as_ref(),
                spec.stride,
                spec.dilation,
                spec.padding,
            )?));
        }
        Ok(Self::Candle {
            weight,
            bias: bias.map(|b| b.reshape((1, cout, 1))).transpose()?,
            padding: spec.padding,
            stride: spec.stride,
            dilation: spec.dilation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Time(t) => t.forward(x),
            Self::Candle {
                weight,
                bias,
                padding,
                stride,
                dilation,
            } => {
                let y = x.conv1d(weight, *padding, *stride, *dilation, 1)?;
                Ok(match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            }
        }
    }

    fn time(&self) -> Result<&TimeConv> {
        match self {
            Self::Time(t) => Ok(t),
            Self::Candle { .. } => Err(AceStepError::input("conv was loaded channel-major")),
        }
    }
}

/// A weight-normalised ConvTranspose1d (kernel 2s, stride s, padding ⌈s/2⌉). On candle it runs
/// with padding 0 and is trimmed; on the CPU it is a time-major window GEMM.
#[derive(Clone, Debug)]
pub enum ConvTranspose {
    Candle {
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        padding: usize,
    },
    Time(TimeConv),
}

impl ConvTranspose {
    /// Bytes of the weights (packed on the CPU).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Self::Time(t) => t.weight_bytes(),
            Self::Candle { weight, .. } => weight.elem_count() * 4,
        }
    }

    fn load(
        p: &Params<'_>,
        cin: usize,
        cout: usize,
        stride: usize,
        time_major: bool,
    ) -> Result<Self> {
        let weight = fold_weight_norm(p, &[cin, cout, 2 * stride])?;
        let bias = p.get("bias", &[cout])?;
        let padding = stride.div_ceil(2);
        if time_major {
            return Ok(Self::Time(TimeConv::conv_transpose(
                &weight,
                Some(&bias),
                stride,
                padding,
            )?));
        }
        Ok(Self::Candle {
            weight,
            bias: bias.reshape((1, cout, 1))?,
            stride,
            padding,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, bias, stride, padding) = match self {
            Self::Time(t) => return t.forward(x),
            Self::Candle {
                weight,
                bias,
                stride,
                padding,
            } => (weight, bias, *stride, *padding),
        };
        // One batch item at a time: candle 0.11.1's padding-0 (col2im) transposed convolution
        // gives wrong values for items after the first of a batch.
        let mut items = Vec::with_capacity(x.dim(0)?);
        for i in 0..x.dim(0)? {
            let y = x
                .narrow(0, i, 1)?
                .conv_transpose1d(weight, 0, 0, stride, 1, 1)?;
            let full = y.dim(2)?;
            items.push(y.narrow(2, padding, full - 2 * padding)?);
        }
        Ok(Tensor::cat(&items, 0)?.broadcast_add(bias)?)
    }

    fn time(&self) -> Result<&TimeConv> {
        match self {
            Self::Time(t) => Ok(t),
            Self::Candle { .. } => Err(AceStepError::input("conv was loaded channel-major")),
        }
    }
}

/// `x + conv2(snake2(conv1(snake1(x))))`, conv1 kernel 7 with dilation d: composed candle ops, or
/// on the CPU one fused time-major kernel.
#[derive(Clone, Debug)]
pub enum ResidualUnit {
    Candle {
        snake1: Snake,
        conv1: Conv,
        snake2: Snake,
        conv2: Conv,
    },
    Time(FusedResidual),
}

impl ResidualUnit {
    /// Bytes of both convolutions' weights.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Self::Time(f) => f.conv1.weight_bytes() + f.conv2.weight_bytes(),
            Self::Candle { conv1, conv2, .. } => conv1.weight_bytes() + conv2.weight_bytes(),
        }
    }

    fn load(p: &Params<'_>, c: usize, dilation: usize, tm: bool) -> Result<Self> {
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
        let snake1 = Snake::load(&p.pp("snake1"), c, tm)?;
        let conv1 = Conv::load(&p.pp("conv1"), (c, c), k7, true, tm)?;
        let snake2 = Snake::load(&p.pp("snake2"), c, tm)?;
        let conv2 = Conv::load(&p.pp("conv2"), (c, c), k1, true, tm)?;
        if tm {
            return Ok(Self::Time(FusedResidual {
                snake1: snake1.params,
                conv1: conv1.time()?.clone(),
                snake2: snake2.params,
                conv2: conv2.time()?.clone(),
            }));
        }
        Ok(Self::Candle {
            snake1,
            conv1,
            snake2,
            conv2,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle {
                snake1,
                conv1,
                snake2,
                conv2,
            } => {
                let y = conv1.forward(&snake1.forward(x)?)?;
                let y = conv2.forward(&snake2.forward(&y)?)?;
                Ok((x + y)?)
            }
            Self::Time(f) => {
                let (l, _) = x.dims2()?;
                let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
                let mut out = Vec::new();
                f.forward_into(&xv, l, &mut out)?;
                Ok(Tensor::from_vec(out, x.dims(), x.device())?)
            }
        }
    }

    /// Time-major `x` `[l, C]` → `out` (the CPU path).
    fn forward_time(&self, x: &[f32], l: usize, out: &mut Vec<f32>) -> Result<()> {
        match self {
            Self::Time(f) => f.forward_into(x, l, out),
            Self::Candle { .. } => Err(AceStepError::input("residual unit loaded channel-major")),
        }
    }
}

/// `res_unit1..3` of block `p`, dilations 1, 3, 9.
fn residual_units(p: &Params<'_>, c: usize, tm: bool) -> Result<[ResidualUnit; 3]> {
    Ok([
        ResidualUnit::load(&p.pp("res_unit1"), c, 1, tm)?,
        ResidualUnit::load(&p.pp("res_unit2"), c, 3, tm)?,
        ResidualUnit::load(&p.pp("res_unit3"), c, 9, tm)?,
    ])
}

/// One decoder block: Snake → ConvTranspose (kernel 2s, stride s) → three residual units
/// (dilations 1, 3, 9).
pub struct DecoderBlock {
    snake: Snake,
    conv_t: ConvTranspose,
    res: [ResidualUnit; 3],
}

impl DecoderBlock {
    /// Bytes of the block's convolution weights.
    pub fn weight_bytes(&self) -> usize {
        self.conv_t.weight_bytes()
            + self
                .res
                .iter()
                .map(ResidualUnit::weight_bytes)
                .sum::<usize>()
    }

    /// Block `p` (e.g. `decoder.block.3`) mapping `cin` → `cout` channels with stride `s`.
    pub fn load(p: &Params<'_>, (cin, cout): (usize, usize), s: usize, tm: bool) -> Result<Self> {
        Ok(Self {
            snake: Snake::load(&p.pp("snake1"), cin, tm)?,
            conv_t: ConvTranspose::load(&p.pp("conv_t1"), cin, cout, s, tm)?,
            res: residual_units(p, cout, tm)?,
        })
    }

    /// Time-major `a` `[l, Cin]` → `a` `[l·s, Cout]` (CPU layout), using `b` as the second
    /// buffer. Returns the new length.
    pub fn forward_time(&self, a: &mut Vec<f32>, b: &mut Vec<f32>, l: usize) -> Result<usize> {
        let l = self
            .conv_t
            .time()?
            .forward_into(a, l, Some(&self.snake.params), b)?;
        std::mem::swap(a, b);
        for r in &self.res {
            r.forward_time(a, l, b)?;
            std::mem::swap(a, b);
        }
        Ok(l)
    }
}

struct EncoderBlock {
    res: [ResidualUnit; 3],
    snake: Snake,
    conv: Conv,
}

/// Run `f` on each batch item in time-major layout: `[B, C, L]` → per item `[L, C]` values →
/// `[L_out, C_out]` values → `[B, C_out, L_out]`.
fn per_item_time_major(
    x: &Tensor,
    c_out: usize,
    f: impl Fn(&[f32], usize) -> Result<Vec<f32>>,
) -> Result<Tensor> {
    let (b, _, l) = x.dims3()?;
    let mut outs = Vec::with_capacity(b);
    for i in 0..b {
        let item: Vec<f32> = x.get(i)?.t()?.contiguous()?.flatten_all()?.to_vec1()?;
        let y = f(&item, l)?;
        let l_out = y.len() / c_out.max(1);
        outs.push(
            Tensor::from_vec(y, (l_out, c_out), x.device())?
                .t()?
                .contiguous()?,
        );
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
    /// Bytes of every convolution weight (the packed panels on the CPU).
    pub fn weight_bytes(&self) -> usize {
        self.conv1.weight_bytes()
            + self
                .blocks
                .iter()
                .map(DecoderBlock::weight_bytes)
                .sum::<usize>()
            + self.conv2.weight_bytes()
    }

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
        let p = Params::new(src).pp("decoder");
        let mut blocks = Vec::with_capacity(n);
        for (i, &s) in strides.iter().enumerate() {
            let (cin, cout) = (ch * mults[n - i], ch * mults[n - i - 1]);
            blocks.push(DecoderBlock::load(
                &p.pp("block").pp(i),
                (cin, cout),
                s,
                tm,
            )?);
        }
        let k7 = ConvSpec {
            k: 7,
            stride: 1,
            padding: 3,
            dilation: 1,
        };
        Ok(Self {
            conv1: Conv::load(
                &p.pp("conv1"),
                (cfg.decoder_input_channels, top),
                k7,
                true,
                tm,
            )?,
            blocks,
            snake1: Snake::load(&p.pp("snake1"), ch, tm)?,
            conv2: Conv::load(&p.pp("conv2"), (ch, cfg.audio_channels), k7, false, tm)?,
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

    /// Time-major latents `[l, C]` → audio `[l·hop, channels]`, on two ping-pong buffers (the
    /// largest activations, `[L·hop/2, 128]`, are hundreds of MB for a long window).
    fn run_time(&self, x: &[f32], l: usize) -> Result<Vec<f32>> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut l = self.conv1.time()?.forward_into(x, l, None, &mut a)?;
        for blk in &self.blocks {
            l = blk.forward_time(&mut a, &mut b, l)?;
        }
        drop(b);
        let mut out = Vec::new();
        self.conv2
            .time()?
            .forward_into(&a, l, Some(&self.snake1.params), &mut out)?;
        Ok(out)
    }

    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        if self.time_major {
            let c_out = self.conv2.time()?.out_channels();
            per_item_time_major(latents, c_out, |x, l| self.run_time(x, l))
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
        let p = Params::new(src).pp("encoder");
        let mut blocks = Vec::with_capacity(cfg.downsampling_ratios.len());
        for (i, &s) in cfg.downsampling_ratios.iter().enumerate() {
            let (cin, cout) = (ch * mults[i], ch * mults[i + 1]);
            let block = p.pp("block").pp(i);
            let down = ConvSpec {
                k: 2 * s,
                stride: s,
                padding: s.div_ceil(2),
                dilation: 1,
            };
            blocks.push(EncoderBlock {
                res: residual_units(&block, cin, tm)?,
                snake: Snake::load(&block.pp("snake1"), cin, tm)?,
                conv: Conv::load(&block.pp("conv1"), (cin, cout), down, true, tm)?,
            });
        }
        let top = ch * mults[cfg.downsampling_ratios.len()];
        Ok(Self {
            conv1: Conv::load(
                &p.pp("conv1"),
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
            snake1: Snake::load(&p.pp("snake1"), top, tm)?,
            conv2: Conv::load(
                &p.pp("conv2"),
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

    /// Time-major audio `[l, channels]` → moments `[l/hop, 2·latent]`.
    fn run_time(&self, x: &[f32], l: usize) -> Result<Vec<f32>> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut l = self.conv1.time()?.forward_into(x, l, None, &mut a)?;
        for blk in &self.blocks {
            for r in &blk.res {
                r.forward_time(&a, l, &mut b)?;
                std::mem::swap(&mut a, &mut b);
            }
            l = blk
                .conv
                .time()?
                .forward_into(&a, l, Some(&blk.snake.params), &mut b)?;
            std::mem::swap(&mut a, &mut b);
        }
        drop(b);
        let mut out = Vec::new();
        self.conv2
            .time()?
            .forward_into(&a, l, Some(&self.snake1.params), &mut out)?;
        set_len(&mut a, 0);
        Ok(out)
    }

    /// The posterior mean.
    pub fn forward(&self, audio: &Tensor) -> Result<Tensor> {
        if self.time_major {
            let c_out = self.conv2.time()?.out_channels();
            let h = per_item_time_major(audio, c_out, |x, l| self.run_time(x, l))?;
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
    use crate::test_util::{max_abs, max_abs_diff};
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
        let lat = demon_engine::rng::normal_tensor(
            7,
            demon_engine::rng::NoiseStream::Initial,
            2 * 4,
            9,
            &Device::Cpu,
        )
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
        let d = max_abs_diff(&a, &b);
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
        let d = max_abs_diff(&e1, &e2);
        // The two layouts take different (equally valid) f32 summation orders; compare relative
        // to the output's scale.
        let scale = max_abs(&e1).max(1.0);
        assert!(d / scale < 1e-5, "encoder {d} (scale {scale})");
    }
}
