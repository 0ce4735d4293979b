//! The DiT forward (acestep.md §1.8) on the CPU for a whole batch, as fused kernels over reused
//! buffers, instead of one candle op (one allocation and one pass over memory) per elementary
//! operation:
//! - every projection is one GEMM over all the rows of the batch (`[B·S, in]`, stacked along M)
//!   from the weight packed once at load (`gemm` module: no weight is packed on the forward path;
//!   LoRA merges repack the changed layer), split over the cores by tiles;
//! - RMSNorm + AdaLN modulation (per batch row: each row has its own timestep), per-head q/k
//!   RMSNorm + RoPE, SiLU·up and the gated residual add are single vectorised passes;
//! - attention runs per batch row, per block of queries and per head, and a sliding-window layer
//!   only multiplies the keys its block can see (`|i − j| ≤ window`: about a third of them for a
//!   60 s song); the softmax is fused and band-limited;
//! - the activations live in a workspace kept between calls (no per-step allocation).
//!
//! The maths and the order of operations follow the composed candle path (`composed.rs`), which
//! the tests compare against. A row's result depends only on that row: every GEMM output is one
//! fixed multiply-add chain whatever M or the thread split (`gemm` module docs), and the
//! attention and element-wise passes work row by row.

use candle_core::{CpuStorage, Storage, Tensor};

use super::layers::{CrossKv, DitWeights};
use crate::cpu::{self, HeadNormRope, Mat, MatMut, Rhs, RmsRows, Softmax};
use crate::error::{AceStepError, Result};
use crate::gemm::{self, Init, Lhs, Out};
use crate::nn::{Linear, RmsNorm};

/// Call `f` with the f32 values of a contiguous CPU tensor, without copying.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
        return Err(AceStepError::input(
            "CPU DiT path needs f32 tensors on the CPU",
        ));
    };
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| AceStepError::input("CPU DiT path needs contiguous tensors"))?;
    Ok(f(&v[a..b]))
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1()?)
}

/// Buffers of one batch forward, kept between calls by whoever runs the DiT step after step (the
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

/// `y (+)= x · Wᵀ (+ b)` over `m` rows, from the packed weight.
fn linear(lin: &Linear, x: &[f32], m: usize, y: &mut [f32], accumulate: bool) -> Result<()> {
    let packed = lin
        .packed()
        .ok_or_else(|| AceStepError::input("CPU DiT path needs packed weights"))?;
    let (k, n) = (packed.k(), packed.n());
    let y = &mut y[..m * n];
    let bias = lin.bias.as_ref().map(values).transpose()?;
    let init = match (&bias, accumulate) {
        (Some(b), false) => Init::Bias(b),
        (Some(b), true) => {
            for row in y.chunks_exact_mut(n) {
                for (v, &bv) in row.iter_mut().zip(b) {
                    *v += bv;
                }
            }
            Init::Accumulate
        }
        (None, true) => Init::Accumulate,
        (None, false) => Init::Zero,
    };
    gemm::gemm(
        Out::dense(y, m, n),
        Lhs::dense(&x[..m * k], m, k),
        packed,
        init,
        cpu::threads(),
    );
    Ok(())
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

pub use super::layers::Row;

/// Per-row AdaLN terms of one layer: `shift`, `1 + scale`, `gate` for attention and MLP.
struct Modulation {
    shift: Vec<f32>,
    sc1: Vec<f32>,
    gate: Vec<f32>,
    c_shift: Vec<f32>,
    c_sc1: Vec<f32>,
    c_gate: Vec<f32>,
}

impl Modulation {
    /// `table` `[6·H]` plus the row's timestep projection `proj` `[6·H]`.
    fn new(table: &[f32], proj: &[f32], h: usize) -> Self {
        let part =
            |i: usize| -> Vec<f32> { (i * h..(i + 1) * h).map(|j| table[j] + proj[j]).collect() };
        let one_plus = |v: Vec<f32>| v.into_iter().map(|x| x + 1.0).collect::<Vec<f32>>();
        Self {
            shift: part(0),
            sc1: one_plus(part(1)),
            gate: part(2),
            c_shift: part(3),
            c_sc1: one_plus(part(4)),
            c_gate: part(5),
        }
    }
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
    forward_batch(
        w,
        ws,
        &[Row {
            x,
            context,
            t,
            t_minus_r,
            kv,
        }],
    )
}

/// A batch of rows of equal length `T` on the CPU → velocity `[B, T, C]`; row `i` of the result
/// is bit-identical to [`forward_row`] of row `i` alone.
pub fn forward_batch(w: &DitWeights, ws: &mut Workspace, rows: &[Row<'_>]) -> Result<Tensor> {
    let first = rows
        .first()
        .ok_or_else(|| AceStepError::input("DiT batch has no rows"))?;
    let (_, frames, c) = first.x.dims3()?;
    for r in rows {
        w.check_row(r.x, r.context, r.kv)?;
        if r.x.dim(1)? != frames {
            return Err(AceStepError::input(format!(
                "DiT batch rows differ in length: {frames} and {} frames",
                r.x.dim(1)?
            )));
        }
    }
    let cfg = &w.cfg;
    let dev = w.device().clone();
    let b = rows.len();
    let cc = first.context.dim(2)?;
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

    // Per row: `temb` [H] and the AdaLN projection [6·H] of its timesteps.
    let mut temb = Vec::with_capacity(b);
    let mut proj = Vec::with_capacity(b);
    for r in rows {
        let (te, pr) = w.time_terms(r.t, r.t_minus_r)?;
        temb.push(values(&te)?);
        proj.push(values(&pr)?);
    }

    // Patches: frame-major within a patch, [context | x] per frame, odd T zero-padded; row i
    // of the batch is rows i·S .. (i + 1)·S of every activation.
    let padded = frames.div_ceil(p) * p;
    let s = padded / p;
    let m = b * s;
    let cin = cc + c;
    {
        let patches = sized(&mut ws.norm, m * p * cin);
        patches.fill(0.0);
        for (i, r) in rows.iter().enumerate() {
            let xv = values(r.x)?;
            let cv = values(r.context)?;
            let base = i * s * p * cin;
            for f in 0..frames {
                let row = &mut patches[base + f * cin..base + (f + 1) * cin];
                row[..cc].copy_from_slice(&cv[f * cc..(f + 1) * cc]);
                row[cc..].copy_from_slice(&xv[f * c..(f + 1) * c]);
            }
        }
    }
    sized(&mut ws.hs, m * h);
    linear(&w.proj_in, &ws.norm, m, &mut ws.hs, false)?;

    if ws.rope_len != s {
        let (cos, sin) = crate::nn::rope_tables(s, d, cfg.rope_theta, &dev)?;
        ws.cos = values(&cos)?;
        ws.sin = values(&sin)?;
        ws.rope_len = s;
    }
    let cross_bias: Vec<Option<Vec<f32>>> = rows
        .iter()
        .map(|r| r.kv.mask.as_ref().map(values).transpose())
        .collect::<Result<_>>()?;

    sized(&mut ws.norm, m * h);
    for (li, layer) in w.layers.iter().enumerate() {
        let table = values(&layer.scale_shift_table)?;
        let mods: Vec<Modulation> = proj
            .iter()
            .map(|pr| Modulation::new(&table, pr, h))
            .collect();

        // Self-attention.
        for (i, md) in mods.iter().enumerate() {
            rms_rows(
                &layer.self_attn_norm,
                &ws.hs[i * s * h..(i + 1) * s * h],
                &mut ws.norm[i * s * h..(i + 1) * s * h],
                h,
                Some((&md.sc1, &md.shift)),
            )?;
        }
        let att = &layer.self_attn;
        sized(&mut ws.q, m * qw);
        sized(&mut ws.k, m * kw);
        sized(&mut ws.v, m * kw);
        linear(&att.q_proj, &ws.norm, m, &mut ws.q, false)?;
        linear(&att.k_proj, &ws.norm, m, &mut ws.k, false)?;
        linear(&att.v_proj, &ws.norm, m, &mut ws.v, false)?;
        for i in 0..b {
            head_norm_rope(
                &att.q_norm,
                &mut ws.q[i * s * qw..(i + 1) * s * qw],
                heads,
                d,
                eps,
                Some((&ws.cos, &ws.sin)),
            )?;
            head_norm_rope(
                &att.k_norm,
                &mut ws.k[i * s * kw..(i + 1) * s * kw],
                kvh,
                d,
                eps,
                Some((&ws.cos, &ws.sin)),
            )?;
        }
        let window = layer.sliding.then_some(cfg.sliding_window);
        sized(&mut ws.attn, m * qw);
        for i in 0..b {
            attention(
                &mut ws.attn[i * s * qw..(i + 1) * s * qw],
                Heads {
                    data: &ws.q[i * s * qw..(i + 1) * s * qw],
                    rows: s,
                    dim: d,
                    head_stride: d,
                    row_stride: qw,
                },
                Heads {
                    data: &ws.k[i * s * kw..(i + 1) * s * kw],
                    rows: s,
                    dim: d,
                    head_stride: d,
                    row_stride: kw,
                },
                Heads {
                    data: &ws.v[i * s * kw..(i + 1) * s * kw],
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
        }
        sized(&mut ws.tmp, m * h);
        linear(&att.o_proj, &ws.attn, m, &mut ws.tmp, false)?;
        for (i, md) in mods.iter().enumerate() {
            let rr = i * s * h..(i + 1) * s * h;
            cpu::add_gated(&mut ws.hs[rr.clone()], &ws.tmp[rr], &md.gate);
        }

        // Cross-attention (cached keys/values `[1, KV, L, D]` per row; no RoPE, no gate).
        for i in 0..b {
            rms_rows(
                &layer.cross_attn_norm,
                &ws.hs[i * s * h..(i + 1) * s * h],
                &mut ws.norm[i * s * h..(i + 1) * s * h],
                h,
                None,
            )?;
        }
        let ca = &layer.cross_attn;
        linear(&ca.q_proj, &ws.norm, m, &mut ws.q, false)?;
        head_norm_rope(&ca.q_norm, &mut ws.q[..m * qw], heads, d, eps, None)?;
        for (i, r) in rows.iter().enumerate() {
            let (ck, cvv) = &r.kv.layers[li];
            let l = ck.dim(2)?;
            let q = &ws.q[i * s * qw..(i + 1) * s * qw];
            let out = &mut ws.attn[i * s * qw..(i + 1) * s * qw];
            with_values(ck, |kvals| {
                with_values(cvv, |vvals| {
                    attention(
                        out,
                        Heads {
                            data: q,
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
                            bias: cross_bias[i].as_deref(),
                            scale,
                        },
                    )
                })
            })??;
        }
        linear(&ca.o_proj, &ws.attn, m, &mut ws.hs, true)?;

        // MLP.
        for (i, md) in mods.iter().enumerate() {
            rms_rows(
                &layer.mlp_norm,
                &ws.hs[i * s * h..(i + 1) * s * h],
                &mut ws.norm[i * s * h..(i + 1) * s * h],
                h,
                Some((&md.c_sc1, &md.c_shift)),
            )?;
        }
        sized(&mut ws.gate, m * inter);
        sized(&mut ws.up, m * inter);
        linear(&layer.mlp.gate_proj, &ws.norm, m, &mut ws.gate, false)?;
        linear(&layer.mlp.up_proj, &ws.norm, m, &mut ws.up, false)?;
        {
            let (g, u) = (&mut ws.gate[..m * inter], &ws.up[..m * inter]);
            cpu::for_each_part(g, inter, |off, part| {
                cpu::silu_mul(part, &u[off..off + part.len()])
            });
        }
        linear(&layer.mlp.down_proj, &ws.gate, m, &mut ws.tmp, false)?;
        for (i, md) in mods.iter().enumerate() {
            let rr = i * s * h..(i + 1) * s * h;
            cpu::add_gated(&mut ws.hs[rr.clone()], &ws.tmp[rr], &md.c_gate);
        }
    }

    // Output: AdaLN from each row's `temb`, then the transposed patch conv as a GEMM.
    let table = values(&w.scale_shift_table)?;
    for (i, te) in temb.iter().enumerate() {
        let shift: Vec<f32> = (0..h).map(|j| table[j] + te[j]).collect();
        let sc1: Vec<f32> = (0..h).map(|j| table[h + j] + te[j] + 1.0).collect();
        rms_rows(
            &w.norm_out,
            &ws.hs[i * s * h..(i + 1) * s * h],
            &mut ws.norm[i * s * h..(i + 1) * s * h],
            h,
            Some((&sc1, &shift)),
        )?;
    }
    let out_w = p * c;
    let mut y = vec![0f32; m * out_w];
    linear(&w.proj_out, &ws.norm, m, &mut y, false)?;
    // Row i's padded output is `[S·p, C]`; keep its first `frames` frames.
    let mut out = Vec::with_capacity(b * frames * c);
    for i in 0..b {
        out.extend_from_slice(&y[i * s * out_w..i * s * out_w + frames * c]);
    }
    Ok(Tensor::from_vec(out, (b, frames, c), &dev)?)
}

/// RMSNorm rows of `x` (`[S, H]`) into `out` (same length), split over the cores.
fn rms_rows(
    norm: &RmsNorm,
    x: &[f32],
    out: &mut [f32],
    h: usize,
    modulation: Option<(&[f32], &[f32])>,
) -> Result<()> {
    let w = values(&norm.weight)?;
    let eps = norm.eps as f32;
    let dst = &mut out[..x.len()];
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

/// Per-head RMSNorm (+ RoPE, positions from 0) of `x` `[S, heads·D]`, split over the cores.
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

    use super::{Row, Workspace, forward_batch, forward_row};
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
            let kv = dit
                .cross_kv(&states, padded.then_some(&mask), true)
                .unwrap();
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
            // In a batch with other rows (other lengths of conditioning, other timesteps), the
            // row gives the same bits.
            let x2 = Tensor::randn(0f32, 1.0, (1, frames, 8), &dev).unwrap();
            let ctx2 = Tensor::randn(0f32, 1.0, (1, frames, 16), &dev).unwrap();
            let states2 = Tensor::randn(0f32, 1.0, (1, 4, 32), &dev).unwrap();
            let kv2 = dit.cross_kv(&states2, None, true).unwrap();
            let other = Row {
                x: &x2,
                context: &ctx2,
                t: 0.2,
                t_minus_r: 0.1,
                kv: &kv2,
            };
            let this = Row {
                x: &x,
                context: &ctx,
                t: 0.6,
                t_minus_r: 0.0,
                kv: &kv,
            };
            let batch = forward_batch(&dit, &mut ws, &[other, this]).unwrap();
            assert_eq!(bits(&batch.narrow(0, 1, 1).unwrap()), bits(&a));
        }
    }
}
