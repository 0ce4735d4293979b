//! The DiT forward as composed candle ops (acestep.md §1.8): the path of every device but the
//! CPU, and on the CPU the reference the fused kernels of `cpu.rs` are tested against.
//!
//! Written for a GPU, where every op is a kernel launch and every read of a value stalls the
//! queue:
//! - a batch runs as one: each projection is one strided-batched product over `[B, S, ·]` (one
//!   GEMM per row inside a single call, so a row's values stay those of the row alone as long as
//!   cuBLAS keeps its kernel for the per-row shape; `tests/gpu.rs` measures it), and the
//!   cross-attention of the rows that share a conditioning is one batched product too;
//! - RMSNorm, softmax and RoPE are candle-nn's fused kernels; RoPE runs on the token-major layout
//!   and the transpose to head-major is folded into the dtype cast that follows it, and the
//!   attention scale is folded into the query norm's weight;
//! - with a low-precision matmul dtype (`--matmul bf16`) every product (projections and both
//!   attention products) and the softmax run on bf16 values with f32 accumulation; the norms,
//!   RoPE, the AdaLN modulation and the residual stream stay f32;
//! - what depends only on the length, the timestep or the weights (RoPE tables, the band mask of
//!   the sliding layers, the timestep embeddings of each step value, the scaled query-norm
//!   weights) is computed once and kept in [`Tables`]; cross-attention keys and values come
//!   cached per conditioning, already in the product dtype. A step uploads nothing but its inputs
//!   and reads nothing back.
//!
//! With `DEMON_DIT_PROFILE=1` every block is timed between device synchronisations ([`profile`]).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::layers::{CrossKv, DitWeights, Row};
use crate::error::{AceStepError, Result};
use crate::nn::{Linear, RmsNorm, Rope, band_mask};

/// Timestep terms kept per distinct `(t, t − r)`; the schedule has a handful of values, so this
/// bound is only reached by continuously varying schedules (then the cache starts over).
const MAX_TIME_ENTRIES: usize = 1024;

/// What the composed forward computes once and reuses: per sequence length the RoPE tables and
/// the band mask, per timestep value both embedders' terms, per layer the scaled query-norm
/// weights. It belongs to one [`DitWeights`] (none of these depend on weights a LoRA or the
/// matmul dtype changes) and starts over when the device changes.
#[derive(Default)]
pub struct Tables {
    device: Option<Device>,
    rope: HashMap<usize, Rope>,
    band: HashMap<(usize, DType), Tensor>,
    /// `(t, t − r)` bits → (`temb` `[1, H]`, `proj` `[1, 6, H]`).
    time: HashMap<(u32, u32), (Tensor, Tensor)>,
    /// `(layer, cross)` → the query norm's weight times `1/√D`.
    q_norm: HashMap<(usize, bool), RmsNorm>,
}

impl Tables {
    fn use_device(&mut self, dev: &Device) {
        if !self.device.as_ref().is_some_and(|d| d.same_device(dev)) {
            *self = Self {
                device: Some(dev.clone()),
                ..Self::default()
            };
        }
    }

    fn rope(&mut self, s: usize, w: &DitWeights) -> Result<Rope> {
        if let Some(r) = self.rope.get(&s) {
            return Ok(r.clone());
        }
        let r = Rope::new(s, w.cfg.head_dim, w.cfg.rope_theta, w.device())?;
        self.rope.insert(s, r.clone());
        Ok(r)
    }

    /// `[S, S]` additive band mask of the sliding layers in `dtype`.
    fn band(&mut self, s: usize, window: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(m) = self.band.get(&(s, dtype)) {
            return Ok(m.clone());
        }
        let m = band_mask(s, s, Some(window), false, dev)?.to_dtype(dtype)?;
        self.band.insert((s, dtype), m.clone());
        Ok(m)
    }

    /// Every row's timestep terms (each computed alone, once per value): (`[B, H]`, `[B, 6, H]`).
    fn time_terms(&mut self, w: &DitWeights, rows: &[Row<'_>]) -> Result<(Tensor, Tensor)> {
        let (mut temb, mut proj) = (Vec::with_capacity(rows.len()), Vec::new());
        for r in rows {
            let key = (r.t.to_bits(), r.t_minus_r.to_bits());
            if !self.time.contains_key(&key) {
                if self.time.len() >= MAX_TIME_ENTRIES {
                    self.time.clear();
                }
                self.time.insert(key, w.time_terms(r.t, r.t_minus_r)?);
            }
            let (te, pr) = &self.time[&key];
            temb.push(te.clone());
            proj.push(pr.clone());
        }
        Ok((Tensor::cat(&temb, 0)?, Tensor::cat(&proj, 0)?))
    }

    fn q_norm(&mut self, layer: usize, cross: bool, norm: &RmsNorm, scale: f64) -> Result<RmsNorm> {
        if let Some(n) = self.q_norm.get(&(layer, cross)) {
            return Ok(n.clone());
        }
        let n = RmsNorm {
            weight: norm.weight.affine(scale, 0.0)?,
            eps: norm.eps,
        };
        self.q_norm.insert((layer, cross), n.clone());
        Ok(n)
    }
}

/// A batch of rows of one length → velocity `[B, T, C]`.
pub fn forward_batch(w: &DitWeights, tables: &mut Tables, rows: &[Row<'_>]) -> Result<Tensor> {
    let first = rows
        .first()
        .ok_or_else(|| AceStepError::input("empty DiT batch"))?;
    let (_, frames, c) = first.x.dims3()?;
    for r in rows {
        w.check_row(r.x, r.context, r.kv)?;
        if r.x.dim(1)? != frames {
            return Err(AceStepError::input(
                "the rows of one DiT batch must have the same length",
            ));
        }
    }
    let cfg = &w.cfg;
    let dev = w.device().clone();
    tables.use_device(&dev);
    let mut timer = profile::Timer::start(&dev)?;
    let b = rows.len();
    let p = cfg.patch_size;
    let act = w.matmul_dtype();
    let (temb, proj) = tables.time_terms(w, rows)?; // [B, H], [B, 6, H]

    // [context | x], zero-pad T to a multiple of the patch, patchify.
    let contexts: Vec<&Tensor> = rows.iter().map(|r| r.context).collect();
    let xs: Vec<&Tensor> = rows.iter().map(|r| r.x).collect();
    let mut hs = Tensor::cat(&[Tensor::cat(&contexts, 0)?, Tensor::cat(&xs, 0)?], 2)?;
    let padded = frames.div_ceil(p) * p;
    if padded != frames {
        hs = hs.pad_with_zeros(1, 0, padded - frames)?;
    }
    let s = padded / p;
    let mut hs = w
        .proj_in
        .forward(&hs.reshape((b, s, p * cfg.in_channels))?)?; // [B, S, H]

    let rope = tables.rope(s, w)?;
    let band = if w.layers.iter().any(|l| l.sliding) {
        Some(tables.band(s, cfg.sliding_window, act, &dev)?)
    } else {
        None
    };
    let groups = KvGroups::new(rows, act, &dev)?;
    let scale = 1.0 / (cfg.head_dim as f64).sqrt();
    timer.lap("input")?;

    for (li, layer) in w.layers.iter().enumerate() {
        let m = layer.scale_shift_table.broadcast_add(&proj)?; // [B, 6, H]
        let part = |i: usize| m.narrow(1, i, 1);
        let (shift, gate, c_shift, c_gate) = (part(0)?, part(2)?, part(3)?, part(5)?);
        let (sc, c_sc) = (part(1)?.affine(1.0, 1.0)?, part(4)?.affine(1.0, 1.0)?);

        let sa = &layer.self_attn;
        let n = modulate(&layer.self_attn_norm, &hs, &sc, &shift)?.to_dtype(act)?;
        let q_norm = tables.q_norm(li, false, &sa.q_norm, scale)?;
        let q = heads(&sa.q_proj, &q_norm, &n, sa.heads, Some(&rope), act)?;
        let k = heads(&sa.k_proj, &sa.k_norm, &n, sa.kv_heads, Some(&rope), act)?;
        let v = plain_heads(&sa.v_proj, &n, sa.kv_heads)?;
        let mask = match (&band, layer.sliding) {
            (Some(m), true) => KeyMask::Band(m),
            _ => KeyMask::None,
        };
        let o = attend(&q, &k, &v, mask)?;
        let a = sa.o_proj.forward(&o)?.to_dtype(DType::F32)?;
        hs = (hs + a.broadcast_mul(&gate)?)?;
        timer.lap("self_attn")?;

        let ca = &layer.cross_attn;
        let n = layer.cross_attn_norm.forward(&hs)?.to_dtype(act)?;
        let q_norm = tables.q_norm(li, true, &ca.q_norm, scale)?;
        let q = heads(&ca.q_proj, &q_norm, &n, ca.heads, None, act)?;
        let o = groups.attend(li, &q)?;
        hs = (hs + ca.o_proj.forward(&o)?.to_dtype(DType::F32)?)?;
        timer.lap("cross_attn")?;

        let n = modulate(&layer.mlp_norm, &hs, &c_sc, &c_shift)?.to_dtype(act)?;
        let y = layer.mlp.forward(&n)?.to_dtype(DType::F32)?;
        hs = (hs + y.broadcast_mul(&c_gate)?)?;
        timer.lap("mlp")?;
    }

    let m = w.scale_shift_table.broadcast_add(&temb.unsqueeze(1)?)?; // [B, 2, H]
    let (shift, sc) = (m.narrow(1, 0, 1)?, m.narrow(1, 1, 1)?.affine(1.0, 1.0)?);
    let n = modulate(&w.norm_out, &hs, &sc, &shift)?;
    let y = w.proj_out.forward(&n)?; // [B, S, p·C]
    let out = y.reshape((b, s * p, c))?.narrow(1, 0, frames)?;
    timer.lap("output")?;
    Ok(out)
}

/// One row as composed candle ops (no reuse of tables between calls).
pub fn forward_row(
    w: &DitWeights,
    x: &Tensor,
    context: &Tensor,
    t: f32,
    t_minus_r: f32,
    kv: &CrossKv,
) -> Result<Tensor> {
    let row = Row {
        x,
        context,
        t,
        t_minus_r,
        kv,
    };
    forward_batch(w, &mut Tables::default(), &[row])
}

/// `RMSNorm(x)·scale1 + shift` with `[B, 1, H]` terms (`scale1` is `1 + scale`).
fn modulate(norm: &RmsNorm, x: &Tensor, scale1: &Tensor, shift: &Tensor) -> Result<Tensor> {
    Ok(norm
        .forward(x)?
        .broadcast_mul(scale1)?
        .broadcast_add(shift)?)
}

/// `x` `[B, S, ·]` (product dtype) → normalised heads `[B, n, S, D]` in `dtype`: the projection,
/// the per-head RMSNorm and RoPE in f32 on the token-major layout, then one cast that also
/// transposes to head-major.
fn heads(
    proj: &Linear,
    norm: &RmsNorm,
    x: &Tensor,
    n: usize,
    rope: Option<&Rope>,
    dtype: DType,
) -> Result<Tensor> {
    let (b, s, _) = x.dims3()?;
    let y = proj.forward(x)?.to_dtype(DType::F32)?;
    let d = y.dim(2)? / n.max(1);
    let mut y = norm.forward(&y.reshape((b, s, n, d))?)?;
    if let Some(r) = rope {
        y = r.apply_thd(&y)?;
    }
    dense(&y.transpose(1, 2)?, dtype)
}

/// `x` `[B, S, ·]` → `[B, n, S, D]` projected heads without a norm (the values).
fn plain_heads(proj: &Linear, x: &Tensor, n: usize) -> Result<Tensor> {
    let (b, s, _) = x.dims3()?;
    let y = proj.forward(x)?;
    let d = y.dim(2)? / n.max(1);
    Ok(y.reshape((b, s, n, d))?.transpose(1, 2)?.contiguous()?)
}

/// `t` contiguous in `dtype`: one strided cast, or one copy when the dtype is already right.
fn dense(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.contiguous()?)
    } else {
        Ok(t.to_dtype(dtype)?)
    }
}

/// Which keys a query sees, as an additive mask in the scores' dtype.
#[derive(Clone, Copy)]
enum KeyMask<'a> {
    None,
    /// `[S, L]`, shared by every head and row (the sliding layers' band).
    Band(&'a Tensor),
    /// `[B or 1, 1, 1, L]` per key (conditioning padding).
    Keys(&'a Tensor),
}

/// Grouped-query attention `softmax(q·kᵀ + mask)·v` (the scale is in `q`): `q` `[B, H, S, D]`,
/// `k`/`v` `[B, KV, L, D]` → `[B, S, H·D]`. Query heads are grouped with their key/value head
/// (`h / (H/KV)`) by reshaping the queries, not by copying keys and values.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: KeyMask<'_>) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (kv, l) = (k.dim(1)?, k.dim(2)?);
    let rep = h / kv.max(1);
    let qg = q.reshape((b, kv, rep * s, d))?;
    let mut scores = qg.matmul(&k.t()?)?; // [B, KV, rep·S, L]
    match mask {
        KeyMask::None => {}
        KeyMask::Band(m) => {
            scores = scores
                .reshape((b, kv, rep, s, l))?
                .broadcast_add(m)?
                .reshape((b, kv, rep * s, l))?;
        }
        KeyMask::Keys(m) => scores = scores.broadcast_add(m)?,
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(v)?; // [B, KV, rep·S, D]
    Ok(out
        .reshape((b, h, s, d))?
        .transpose(1, 2)?
        .reshape((b, s, h * d))?)
}

/// The rows of a batch grouped by the cross-attention keys/values they share (rows with the same
/// conditioning get the same cached `CrossKv`).
struct KvGroups<'a> {
    groups: Vec<KvGroup<'a>>,
    /// Row order from the groups' concatenated order, when the groups interleave.
    inverse: Option<Tensor>,
    dtype: DType,
}

struct KvGroup<'a> {
    kv: &'a CrossKv,
    rows: Vec<usize>,
    /// The rows as a device index when they are not one contiguous range.
    index: Option<Tensor>,
    /// The key mask in the product dtype.
    mask: Option<Tensor>,
}

impl<'a> KvGroups<'a> {
    fn new(rows: &[Row<'a>], dtype: DType, dev: &Device) -> Result<Self> {
        let mut groups: Vec<KvGroup<'a>> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            match groups.iter_mut().find(|g| std::ptr::eq(g.kv, r.kv)) {
                Some(g) => g.rows.push(i),
                None => groups.push(KvGroup {
                    kv: r.kv,
                    rows: vec![i],
                    index: None,
                    mask: None,
                }),
            }
        }
        for g in &mut groups {
            let contiguous = g.rows.windows(2).all(|p| p[1] == p[0] + 1);
            if !contiguous {
                let idx: Vec<u32> = g.rows.iter().map(|&i| i as u32).collect();
                g.index = Some(Tensor::from_vec(idx, g.rows.len(), dev)?);
            }
            g.mask = match &g.kv.mask {
                Some(m) => Some(m.to_dtype(dtype)?),
                None => None,
            };
        }
        let order: Vec<usize> = groups.iter().flat_map(|g| g.rows.iter().copied()).collect();
        let inverse = if order.iter().enumerate().all(|(i, &r)| i == r) {
            None
        } else {
            let mut inv = vec![0u32; order.len()];
            for (pos, &row) in order.iter().enumerate() {
                inv[row] = pos as u32;
            }
            Some(Tensor::from_vec(inv, order.len(), dev)?)
        };
        Ok(Self {
            groups,
            inverse,
            dtype,
        })
    }

    /// Cross-attention of layer `layer` for queries `q` `[B, H, S, D]` → `[B, S, H·D]`.
    fn attend(&self, layer: usize, q: &Tensor) -> Result<Tensor> {
        let mut outs = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let n = g.rows.len();
            let qg = match &g.index {
                _ if self.groups.len() == 1 => q.clone(),
                Some(idx) => q.index_select(idx, 0)?,
                None => q.narrow(0, g.rows[0], n)?,
            };
            let (k, v) = &g.kv.layers[layer];
            let expand = |t: &Tensor| -> Result<Tensor> {
                let t = if t.dtype() == self.dtype {
                    t.clone()
                } else {
                    t.to_dtype(self.dtype)?
                };
                if n == 1 {
                    return Ok(t);
                }
                let (_, heads, l, d) = t.dims4()?;
                Ok(t.broadcast_as((n, heads, l, d))?.contiguous()?)
            };
            let mask = match &g.mask {
                Some(m) => KeyMask::Keys(m),
                None => KeyMask::None,
            };
            outs.push(attend(&qg, &expand(k)?, &expand(v)?, mask)?);
        }
        let out = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 0)?
        };
        Ok(match &self.inverse {
            Some(inv) => out.index_select(inv, 0)?,
            None => out,
        })
    }
}

/// Per-block timing of the composed forward, on when `DEMON_DIT_PROFILE=1`: each block ends with
/// a device synchronisation, so the times are the device's (and the run is slower: the host can
/// no longer queue ahead). `demon bench` reports them as `dit_profile`.
pub mod profile {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    use candle_core::Device;
    use serde::Serialize;

    use crate::error::Result;

    /// Totals of one block since the last [`take`].
    #[derive(Clone, Debug, Default, PartialEq, Serialize)]
    pub struct BlockTime {
        /// Times the block ran (layers × forward calls for the per-layer blocks).
        pub calls: u64,
        pub total_ms: f64,
        pub mean_ms: f64,
    }

    static TOTALS: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

    /// Whether `DEMON_DIT_PROFILE=1` was set when first asked.
    pub fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("DEMON_DIT_PROFILE").is_ok_and(|v| v == "1"))
    }

    /// The totals since the last call, and start over.
    pub fn take() -> BTreeMap<String, BlockTime> {
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let out = totals
            .iter()
            .map(|(k, &(calls, s))| {
                let total_ms = s * 1e3;
                let mean_ms = total_ms / calls.max(1) as f64;
                let t = BlockTime {
                    calls,
                    total_ms,
                    mean_ms,
                };
                (k.to_string(), t)
            })
            .collect();
        totals.clear();
        out
    }

    /// Laps of one forward call; does nothing unless [`enabled`].
    pub(crate) struct Timer {
        device: Option<Device>,
        last: Instant,
    }

    impl Timer {
        pub(crate) fn start(device: &Device) -> Result<Self> {
            let device = if enabled() {
                device.synchronize()?;
                Some(device.clone())
            } else {
                None
            };
            Ok(Self {
                device,
                last: Instant::now(),
            })
        }

        pub(crate) fn lap(&mut self, block: &'static str) -> Result<()> {
            let Some(dev) = &self.device else {
                return Ok(());
            };
            dev.synchronize()?;
            let now = Instant::now();
            let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            let e = totals.entry(block).or_default();
            e.0 += 1;
            e.1 += (now - self.last).as_secs_f64();
            self.last = now;
            Ok(())
        }
    }

    /// A serial number that grows by one with every tensor candle creates (kernel outputs and
    /// views alike): the difference around a call counts its tensor ops, an upper bound of the
    /// kernels it launches.
    pub fn tensor_serial() -> usize {
        let t = candle_core::Tensor::zeros((), candle_core::DType::F32, &Device::Cpu);
        t.map(|t| {
            let id = format!("{:?}", t.id());
            id.chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0)
        })
        .unwrap_or(0)
    }
}
