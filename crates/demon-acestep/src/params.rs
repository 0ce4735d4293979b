//! Where parameters come from and how they are named: the [`TensorSource`] trait (a checkpoint's
//! [`ComponentWeights`], or [`RandomSource`]'s deterministic values for full-size benchmarks
//! without files) and [`Params`], a source seen under a name prefix, the way candle's
//! `VarBuilder::pp` scopes a module: `p.pp("layers").pp(3).get("weight", …)` reads
//! `…layers.3.weight`. Every name is the *original* ACE-Step checkpoint name (the diffusers names
//! are translated when the files are opened, `weights.rs`).

use std::fmt::Display;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::weights::ComponentWeights;

/// Where parameters come from.
pub trait TensorSource {
    /// The tensor `name` (original checkpoint naming) with exactly `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// `true` when `name` exists (optional parameters such as biases).
    fn has(&self, name: &str) -> bool;
    fn device(&self) -> &Device;
}

impl TensorSource for ComponentWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(name, shape)
    }
    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
    fn device(&self) -> &Device {
        ComponentWeights::device(self)
    }
}

/// Random parameters for benchmarks: norms are ones, everything else uniform with the variance of
/// a `1/fan_in` initialisation, from a counter-based generator keyed by the seed and the name.
pub struct RandomSource {
    pub seed: u64,
    pub device: Device,
}

impl TensorSource for RandomSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let is_norm = name.ends_with("norm.weight")
            || name.ends_with("layernorm.weight")
            || name.contains("_norm.");
        if is_norm {
            return Ok(Tensor::ones(shape, DType::F32, &self.device)?);
        }
        let fan_in = if shape.len() >= 2 {
            shape[1..].iter().product::<usize>()
        } else {
            shape.first().copied().unwrap_or(1)
        };
        let bound = (3.0 / fan_in.max(1) as f32).sqrt();
        let state = self.seed ^ fnv1a(name);
        // Value i comes from the counter state + (i + 1)·γ (SplitMix64), so chunks can be filled
        // in parallel with exactly the values a sequential loop gives (full-size models have
        // billions of parameters).
        let mut values = vec![0f32; n];
        const CHUNK: usize = 1 << 16;
        values
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, out)| {
                for (j, v) in out.iter_mut().enumerate() {
                    let i = (c * CHUNK + j) as u64;
                    let mut z = state.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    let u = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                    *v = (2.0 * u - 1.0) * bound;
                }
            });
        Ok(Tensor::from_vec(values, shape, &self.device)?)
    }
    fn has(&self, _name: &str) -> bool {
        true
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A [`TensorSource`] under a name prefix.
#[derive(Clone)]
pub struct Params<'a> {
    src: &'a dyn TensorSource,
    /// Empty at the root, else the dotted path ending without a dot.
    prefix: String,
}

impl<'a> Params<'a> {
    /// The root of `src` (no prefix).
    pub fn new(src: &'a dyn TensorSource) -> Self {
        Self {
            src,
            prefix: String::new(),
        }
    }

    /// The sub-scope `segment` (a module name, or a layer index).
    pub fn pp(&self, segment: impl Display) -> Self {
        Self {
            src: self.src,
            prefix: self.name(&segment.to_string()),
        }
    }

    /// The full name of `leaf` in this scope.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_owned()
        } else {
            let mut n = String::with_capacity(self.prefix.len() + 1 + leaf.len());
            n.push_str(&self.prefix);
            n.push('.');
            n.push_str(leaf);
            n
        }
    }

    /// Tensor `leaf` of this scope with exactly `shape`.
    pub fn get(&self, leaf: &str, shape: &[usize]) -> Result<Tensor> {
        self.src.tensor(&self.name(leaf), shape)
    }

    /// `true` when tensor `leaf` of this scope exists.
    pub fn has(&self, leaf: &str) -> bool {
        self.src.has(&self.name(leaf))
    }

    pub fn device(&self) -> &'a Device {
        self.src.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel random source gives the values of the sequential SplitMix64 loop.
    #[test]
    fn random_source_is_the_sequential_stream() {
        let src = RandomSource {
            seed: 7,
            device: Device::Cpu,
        };
        let n = 70_000 * 2 + 13;
        let got: Vec<f32> = src
            .tensor("w", &[2, n / 2])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let bound = (3.0 / (n / 2) as f32).sqrt();
        let mut state = 7u64 ^ fnv1a("w");
        for (i, g) in got.iter().enumerate() {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32;
            assert_eq!(*g, (2.0 * u - 1.0) * bound, "value {i}");
        }
    }

    #[test]
    fn scopes_join_names_with_dots() {
        let src = RandomSource {
            seed: 1,
            device: Device::Cpu,
        };
        let p = Params::new(&src);
        assert_eq!(p.name("null_condition_emb"), "null_condition_emb");
        let q = p.pp("decoder").pp("layers").pp(3);
        assert_eq!(
            q.name("scale_shift_table"),
            "decoder.layers.3.scale_shift_table"
        );
        // The same name gives the same random values through a scope or directly.
        let a = q.pp("mlp").get("weight", &[2, 3]).unwrap();
        let b = src.tensor("decoder.layers.3.mlp.weight", &[2, 3]).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
