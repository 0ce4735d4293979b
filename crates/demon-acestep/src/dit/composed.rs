//! The DiT row forward as composed candle ops (acestep.md §1.8): runs on any device, and is the
//! reference the fused CPU kernels of `cpu.rs` are tested against.

use candle_core::Tensor;

use super::layers::{CrossKv, DitWeights};
use crate::error::Result;
use crate::nn::{Mask, RmsNorm, attention, rope_tables};

/// One row as composed candle ops: `x` `[1, T, C]`, `context` `[1, T, Cc]`, timestep `t`,
/// `t − r`, cross K/V → velocity `[1, T, C]`.
pub fn forward_row(
    w: &DitWeights,
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
    let p = cfg.patch_size;
    let (temb, proj) = w.time_terms(t, t_minus_r)?; // [1, H], [1, 6, H]

    // [context | x], zero-pad T to a multiple of the patch, patchify.
    let mut hs = Tensor::cat(&[context, x], 2)?;
    let padded = frames.div_ceil(p) * p;
    if padded != frames {
        hs = hs.pad_with_zeros(1, 0, padded - frames)?;
    }
    let s = padded / p;
    let mut hs = w
        .proj_in
        .forward(&hs.reshape((1, s, p * cfg.in_channels))?)?; // [1, S, H]

    let rope = rope_tables(s, cfg.head_dim, cfg.rope_theta, &dev)?;
    let scale = 1.0 / (cfg.head_dim as f64).sqrt();
    for (layer, (k, v)) in w.layers.iter().zip(&kv.layers) {
        let m = layer.scale_shift_table.broadcast_add(&proj)?; // [1, 6, H]
        let part = |i: usize| m.narrow(1, i, 1);
        let (shift, sc, gate) = (part(0)?, part(1)?, part(2)?);
        let (c_shift, c_sc, c_gate) = (part(3)?, part(4)?, part(5)?);

        let n = adaln(&layer.self_attn_norm, &hs, &sc, &shift)?;
        let mask = if layer.sliding {
            Mask::Band(cfg.sliding_window)
        } else {
            Mask::None
        };
        let a = layer.self_attn.self_attention(&n, &rope, mask)?;
        hs = (&hs + a.broadcast_mul(&gate)?)?;

        let n = layer.cross_attn_norm.forward(&hs)?;
        let q = layer.cross_attn.queries(&n)?;
        let cross_mask = match &kv.mask {
            Some(m) => Mask::Additive(m),
            None => Mask::None,
        };
        let o = attention(&q, k, v, cross_mask, scale)?;
        hs = (&hs + layer.cross_attn.o_proj.forward(&o)?)?;

        let n = adaln(&layer.mlp_norm, &hs, &c_sc, &c_shift)?;
        hs = (&hs + layer.mlp.forward(&n)?.broadcast_mul(&c_gate)?)?;
    }

    let m = w.scale_shift_table.broadcast_add(&temb.unsqueeze(1)?)?; // [1, 2, H]
    let (shift, sc) = (m.narrow(1, 0, 1)?, m.narrow(1, 1, 1)?);
    let n = adaln(&w.norm_out, &hs, &sc, &shift)?;
    let y = w.proj_out.forward(&n)?; // [1, S, p·C]
    Ok(y.reshape((1, s * p, c))?.narrow(1, 0, frames)?)
}

/// `RMSNorm(x)·(1 + scale) + shift` with `[1, 1, H]` modulation terms.
fn adaln(norm: &RmsNorm, x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let n = norm.forward(x)?;
    Ok(n.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}
