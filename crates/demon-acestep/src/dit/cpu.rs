//! The DiT row forward (acestep.md §1.8) on the CPU as fused kernels over reused
//! buffers, instead of one candle op (one allocation and one pass over memory) per elementary
//! operation:
//! - every projection is one GEMM straight from the stored `Linear` weight (no copy; LoRA merges
//!   are seen because the weight tensor is read at each call), rows split over the cores;
//! - RMSNorm + AdaLN modulation, per-head q/k RMSNorm + RoPE, SiLU·up and the gated residual
//!   add are single vectorised passes;
//! - attention runs per block of queries and per head, and a sliding-window layer only multiplies
//!   the keys its block can see (`|i − j| ≤ window`: about a third of them for a 60 s song);
//!   the softmax is fused and band-limited;
//! - the activations live in a workspace kept between calls (no per-step allocation).
//!
//! The maths and the order of operations follow the composed candle path (`composed.rs`), which
//! the tests compare against; a row's result depends only on that row.

use candle_core::{CpuStorage, Storage, Tensor};

use super::layers::{CrossKv, DitWeights};
use crate::cpu::{self, HeadNormRope, Mat, MatMut, Rhs, RmsRows, Softmax};
use crate::error::{AceStepError, Result};
use crate::nn::{Linear, RmsNorm};

/// Call `f` with the f32 values of a contiguous CPU tensor, without copying.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
        return Err(AceStepError::input(
            "CPU DiT path needs f32 weights on the CPU",
        ));
    };
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| AceStepError::input("CPU DiT path needs contiguous weights"))?;
    Ok(f(&v[a..b]))
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1()?)
}

/// Buffers of one row forward, kept between calls by whoever runs the DiT step after step (the
/// denoiser), so a step allocates no activations.
#[derive(Default)]
pub struct Workspace {
    hs: Vec<f32>,
    norm: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// RoPE tables `[S, D]` for `rope_len` positions.
    cos: Vec<f32>,
    sin: Vec<f32>,
    rope_len: usize,
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// `y (+)= x · Wᵀ (+ b)` over `m` rows.
fn linear(lin: &Linear, x: &[f32], m: usize, y: &mut [f32], accumulate: bool) -> Result<()> {
    let (n, k) = lin.weight.dims2()?;
    let y = &mut y[..m * n];
    let with_bias = match (&lin.bias, accumulate) {
        (Some(b), false) => {
            let b = values(b)?;
            crate::conv::fill_rows(y, &b);
            true
        }
        (Some(b), true) => {
            let b = values(b)?;
            for row in y.chunks_exact_mut(n) {
                for (v, &bv) in row.iter_mut().zip(&b) {
                    *v += bv;
                }
            }
            true
        }
        (None, acc) => acc,
    };
    with_values(&lin.weight, |w| {
        cpu::linear_rows(y, &x[..m * k], w, (m, k, n), with_bias)
    })
}

/// A head-major or token-major set of attention heads: head `h` is the `[rows, dim]` view at
/// `h·head_stride` with `row_stride`.
#[derive(Clone, Copy)]
struct Heads<'a> {
    data: &'a [f32],
    rows: usize,
    dim: usize,
    head_stride: usize,
    row_stride: usize,
}

impl<'a> Heads<'a> {
    fn rows(&self, h: usize, start: usize, n: usize) -> Mat<'a> {
        Mat {
            data: &self.data[h * self.head_stride + start * self.row_stride..],
            rows: n,
            cols: self.dim,
            row_stride: self.row_stride,
        }
    }
}

/// What an attention call needs besides its tensors.
#[derive(Clone, Copy)]
struct AttnSpec<'a> {
    heads: usize,
    kv_heads: usize,
    /// Bidirectional band `|i − j| ≤ window` (sliding layers).
    window: Option<usize>,
    /// Additive bias per key (key padding).
    bias: Option<&'a [f32]>,
    scale: f32,
}

/// Attention output `out` `[S, heads·D]` (token-major) of queries `q` against keys/values `k`,
/// `v` (grouped: query head `h` uses key head `h / (heads / kv)`), `softmax(q·kᵀ·scale + mask)·v`,
/// per block of queries; with a window, a block only multiplies the keys inside its band.
fn attention(out: &mut [f32], q: Heads<'_>, k: Heads<'_>, v: Heads<'_>, spec: AttnSpec<'_>) {
    let AttnSpec {
        heads,
        kv_heads,
        window,
        bias,
        scale,
    } = spec;
    let (s, d, l) = (q.rows, q.dim, k.rows);
    let rep = (heads / kv_heads.max(1)).max(1);
    let workers = cpu::threads();
    // Blocks small enough to give every worker several, large enough for efficient GEMMs.
    let blk = (s.div_ceil(4 * workers)).clamp(16, 128);
    let width = heads * d;
    cpu::for_each_tile(
        &mut out[..s * width],
        blk * width,
        Vec::new,
        |bi, o, scores| {
            let q0 = bi * blk;
            let n = o.len() / width;
            let (k0, k1) = match window {
                Some(w) => (q0.saturating_sub(w).min(l), (q0 + n + w).min(l)),
                None => (0, l),
            };
            let nk = k1 - k0;
            let sc = sized(scores, n * nk);
            for h in 0..heads {
                let g = h / rep;
                cpu::gemm_view(
                    MatMut::dense(sc, n, nk),
                    q.rows(h, q0, n),
                    k.rows(g, k0, nk),
                    Rhs::NxK,
                    false,
                    scale,
                );
                Softmax {
                    rows: sc,
                    cols: nk,
                    q0,
                    k0,
                    window,
                    bias,
                }
                .run();
                cpu::gemm_view(
                    MatMut {
                        data: &mut o[h * d..],
                        rows: n,
                        cols: d,
                        row_stride: width,
                    },
                    Mat::dense(sc, n, nk),
                    v.rows(g, k0, nk),
                    Rhs::KxN,
                    false,
                    1.0,
                );
            }
        },
    );
}

/// One row on the CPU: the inputs and result of `composed::forward_row`, from fused kernels (module
/// docs) over the buffers of `ws`.
pub fn forward_row(
    w: &DitWeights,
    ws: &mut Workspace,
    x: &Tensor,
    context: &Tensor,
    t: f32,
    t_minus_r: f32,
    kv: &CrossKv,
) -> Result<Tensor> {
    w.check_row(x, context, kv)?;
    let cfg = &w.cfg;
    let dev = w.device().clone();
    let (_, frames, c) = x.dims3()?;
    let cc = context.dim(2)?;
    let p = cfg.patch_size;
    let h = cfg.hidden_size;
    let (heads, kvh, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let (qw, kw) = (heads * d, kvh * d);
    let inter = cfg.intermediate_size;
    let eps = cfg.rms_norm_eps as f32;
    let scale = 1.0 / (d as f32).sqrt();

    let (temb, proj) = w.time_terms(t, t_minus_r)?;
    let temb = values(&temb)?; // [H]
    let proj = values(&proj)?; // [6·H]

    // Patches: frame-major within a patch, [context | x] per frame, odd T zero-padded.
    let padded = frames.div_ceil(p) * p;
    let s = padded / p;
    let xv = values(x)?;
    let cv = values(context)?;
    let cin = cc + c;
    {
        let patches = sized(&mut ws.norm, s * p * cin);
        patches.fill(0.0);
        for f in 0..frames {
            let row = &mut patches[f * cin..(f + 1) * cin];
            row[..cc].copy_from_slice(&cv[f * cc..(f + 1) * cc]);
            row[cc..].copy_from_slice(&xv[f * c..(f + 1) * c]);
        }
    }
    sized(&mut ws.hs, s * h);
    linear(&w.proj_in, &ws.norm, s, &mut ws.hs, false)?;

    if ws.rope_len != s {
        let (cos, sin) = crate::nn::rope_tables(s, d, cfg.rope_theta, &dev)?;
        ws.cos = values(&cos)?;
        ws.sin = values(&sin)?;
        ws.rope_len = s;
    }
    let cross_bias: Option<Vec<f32>> = kv.mask.as_ref().map(values).transpose()?;

    for (layer, (ck, cvv)) in w.layers.iter().zip(&kv.layers) {
        let table = values(&layer.scale_shift_table)?;
        let m: Vec<f32> = table.iter().zip(&proj).map(|(a, b)| a + b).collect();
        let part = |i: usize| &m[i * h..(i + 1) * h];
        let one_plus = |v: &[f32]| v.iter().map(|x| x + 1.0).collect::<Vec<f32>>();
        let (shift, sc1, gate) = (part(0), one_plus(part(1)), part(2));
        let (c_shift, c_sc1, c_gate) = (part(3), one_plus(part(4)), part(5));

        // Self-attention.
        rms_rows(
            &layer.self_attn_norm,
            &ws.hs[..s * h],
            &mut ws.norm,
            h,
            Some((&sc1, shift)),
        )?;
        let att = &layer.self_attn;
        sized(&mut ws.q, s * qw);
        sized(&mut ws.k, s * kw);
        sized(&mut ws.v, s * kw);
        linear(&att.q_proj, &ws.norm, s, &mut ws.q, false)?;
        linear(&att.k_proj, &ws.norm, s, &mut ws.k, false)?;
        linear(&att.v_proj, &ws.norm, s, &mut ws.v, false)?;
        head_norm_rope(
            &att.q_norm,
            &mut ws.q[..s * qw],
            heads,
            d,
            eps,
            Some((&ws.cos, &ws.sin)),
        )?;
        head_norm_rope(
            &att.k_norm,
            &mut ws.k[..s * kw],
            kvh,
            d,
            eps,
            Some((&ws.cos, &ws.sin)),
        )?;
        let window = layer.sliding.then_some(cfg.sliding_window);
        sized(&mut ws.attn, s * qw);
        attention(
            &mut ws.attn,
            Heads {
                data: &ws.q,
                rows: s,
                dim: d,
                head_stride: d,
                row_stride: qw,
            },
            Heads {
                data: &ws.k,
                rows: s,
                dim: d,
                head_stride: d,
                row_stride: kw,
            },
            Heads {
                data: &ws.v,
                rows: s,
                dim: d,
                head_stride: d,
                row_stride: kw,
            },
            AttnSpec {
                heads,
                kv_heads: kvh,
                window,
                bias: None,
                scale,
            },
        );
        sized(&mut ws.tmp, s * h);
        linear(&att.o_proj, &ws.attn, s, &mut ws.tmp, false)?;
        cpu::add_gated(&mut ws.hs[..s * h], &ws.tmp[..s * h], gate);

        // Cross-attention (cached keys/values `[1, KV, L, D]`; no RoPE, no gate).
        rms_rows(
            &layer.cross_attn_norm,
            &ws.hs[..s * h],
            &mut ws.norm,
            h,
            None,
        )?;
        let ca = &layer.cross_attn;
        linear(&ca.q_proj, &ws.norm, s, &mut ws.q, false)?;
        head_norm_rope(&ca.q_norm, &mut ws.q[..s * qw], heads, d, eps, None)?;
        let l = ck.dim(2)?;
        with_values(ck, |kvals| {
            with_values(cvv, |vvals| {
                attention(
                    &mut ws.attn,
                    Heads {
                        data: &ws.q,
                        rows: s,
                        dim: d,
                        head_stride: d,
                        row_stride: qw,
                    },
                    Heads {
                        data: kvals,
                        rows: l,
                        dim: d,
                        head_stride: l * d,
                        row_stride: d,
                    },
                    Heads {
                        data: vvals,
                        rows: l,
                        dim: d,
                        head_stride: l * d,
                        row_stride: d,
                    },
                    AttnSpec {
                        heads,
                        kv_heads: kvh,
                        window: None,
                        bias: cross_bias.as_deref(),
                        scale,
                    },
                )
            })
        })??;
        linear(&ca.o_proj, &ws.attn, s, &mut ws.hs, true)?;

        // MLP.
        rms_rows(
            &layer.mlp_norm,
            &ws.hs[..s * h],
            &mut ws.norm,
            h,
            Some((&c_sc1, c_shift)),
        )?;
        sized(&mut ws.gate, s * inter);
        sized(&mut ws.up, s * inter);
        linear(&layer.mlp.gate_proj, &ws.norm, s, &mut ws.gate, false)?;
        linear(&layer.mlp.up_proj, &ws.norm, s, &mut ws.up, false)?;
        {
            let (g, u) = (&mut ws.gate[..s * inter], &ws.up[..s * inter]);
            cpu::for_each_part(g, inter, |off, part| {
                cpu::silu_mul(part, &u[off..off + part.len()])
            });
        }
        linear(&layer.mlp.down_proj, &ws.gate, s, &mut ws.tmp, false)?;
        cpu::add_gated(&mut ws.hs[..s * h], &ws.tmp[..s * h], c_gate);
    }

    // Output: AdaLN from `temb`, then the transposed patch conv as a GEMM.
    let table = values(&w.scale_shift_table)?;
    let shift: Vec<f32> = (0..h).map(|i| table[i] + temb[i]).collect();
    let sc1: Vec<f32> = (0..h).map(|i| table[h + i] + temb[i] + 1.0).collect();
    rms_rows(
        &w.norm_out,
        &ws.hs[..s * h],
        &mut ws.norm,
        h,
        Some((&sc1, &shift)),
    )?;
    let out_w = p * c;
    let mut y = vec![0f32; s * out_w];
    linear(&w.proj_out, &ws.norm, s, &mut y, false)?;
    y.truncate(frames * c);
    Ok(Tensor::from_vec(y, (1, frames, c), &dev)?)
}

/// RMSNorm rows of `x` (`[S, H]` prefix of the buffer) into `out`, split over the cores.
fn rms_rows(
    norm: &RmsNorm,
    x: &[f32],
    out: &mut Vec<f32>,
    h: usize,
    modulation: Option<(&[f32], &[f32])>,
) -> Result<()> {
    let w = values(&norm.weight)?;
    let eps = norm.eps as f32;
    let dst = sized(out, x.len());
    cpu::for_each_part(dst, h, |off, part| {
        let n = part.len();
        RmsRows {
            dst: part,
            src: &x[off..off + n],
            weight: &w,
            eps,
            modulation,
        }
        .run()
    });
    Ok(())
}

/// Per-head RMSNorm (+ RoPE) of `x` `[S, heads·D]`, split over the cores.
fn head_norm_rope(
    norm: &RmsNorm,
    x: &mut [f32],
    heads: usize,
    d: usize,
    eps: f32,
    rope: Option<(&[f32], &[f32])>,
) -> Result<()> {
    let w = values(&norm.weight)?;
    let width = heads * d;
    cpu::for_each_part(x, width, |off, part| {
        let r0 = off / width;
        let rows = part.len() / width;
        HeadNormRope {
            x: part,
            heads,
            head_dim: d,
            weight: &w,
            eps,
            rope: rope.map(|(c, s)| (&c[r0 * d..(r0 + rows) * d], &s[r0 * d..(r0 + rows) * d])),
        }
        .run()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::test_util::{max_abs, max_abs_diff};
    use candle_core::{Device, Tensor};

    use super::{Workspace, forward_row};
    use crate::config::DitConfig;
    use crate::dit::{DitWeights, composed};
    use crate::nn::RandomSource;

    /// The fused CPU row forward equals the composed candle ops: several query blocks, a band
    /// narrower than a block, odd frame count, grouped heads and a padded conditioning.
    #[test]
    fn cpu_kernels_match_candle_ops() {
        let dev = Device::Cpu;
        let mut cfg = DitConfig::turbo_2b();
        cfg.hidden_size = 64;
        cfg.intermediate_size = 96;
        cfg.num_hidden_layers = 4;
        cfg.sliding_layers = vec![true, false, true, false];
        cfg.num_attention_heads = 4;
        cfg.num_key_value_heads = 2;
        cfg.head_dim = 16;
        cfg.sliding_window = 5;
        cfg.in_channels = 24;
        cfg.audio_acoustic_hidden_dim = 8;
        cfg.encoder.hidden_size = 32;
        let dit = DitWeights::load(
            &RandomSource {
                seed: 9,
                device: dev.clone(),
            },
            &cfg,
        )
        .unwrap();
        for (frames, padded) in [(61usize, true), (8, false), (301, false)] {
            let x = Tensor::randn(0f32, 1.0, (1, frames, 8), &dev).unwrap();
            let ctx = Tensor::randn(0f32, 1.0, (1, frames, 16), &dev).unwrap();
            let states = Tensor::randn(0f32, 1.0, (1, 7, 32), &dev).unwrap();
            let mask = Tensor::new(&[[1f32, 1., 1., 1., 1., 0., 0.]], &dev).unwrap();
            let kv = dit.cross_kv(&states, padded.then_some(&mask)).unwrap();
            let mut ws = Workspace::default();
            let a = forward_row(&dit, &mut ws, &x, &ctx, 0.6, 0.0, &kv).unwrap();
            let b = composed::forward_row(&dit, &x, &ctx, 0.6, 0.0, &kv).unwrap();
            assert_eq!(a.dims(), b.dims());
            let d = max_abs_diff(&a, &b);
            let scale = max_abs(&b);
            assert!(
                d <= 1e-5 * scale.max(1.0),
                "frames {frames}: {d} (scale {scale})"
            );
            // Reusing the workspace gives the same bits.
            let again = forward_row(&dit, &mut ws, &x, &ctx, 0.6, 0.0, &kv).unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(bits(&a), bits(&again));
        }
    }
}
