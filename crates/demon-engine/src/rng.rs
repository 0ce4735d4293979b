//! A seeded, portable Gaussian noise source.
//!
//! DEMON draws noise with torch's CPU Mersenne Twister; reproducing that stream is pointless for
//! a re-implementation, but reproducibility is not: the same seed must give the same noise on
//! every machine and whatever batch a slot happens to share. So noise is counter-based:
//! Philox4x32-10 (Salmon et al., SC'11) keyed by the slot's seed, with the counter holding the
//! element index and a *stream* that names what the noise is for (initial latent, the SDE draw of
//! step k, ...). Uniforms become normals by Box–Muller computed in f64 with `libm`, whose results
//! do not depend on the platform's math library.

use candle_core::{Device, Tensor};

use crate::error::Result;

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: 4 random words for `counter` under `key`.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let p0 = (PHILOX_M0 as u64) * (c[0] as u64);
        let p1 = (PHILOX_M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// What a noise draw is for. Each purpose (and each step) gets its own independent stream, so
/// adding a feature never shifts the noise another feature sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoiseStream {
    /// The slot's initial latent noise.
    Initial,
    /// Fresh re-noise for the SDE step leaving step `k`.
    Sde(u32),
    /// ODE noise injection after step `k`.
    Ode(u32),
    /// The fixed noise of a latent mask, reused at every step.
    Mask,
    /// Free for backends and tests.
    Custom(u32, u32),
}

impl NoiseStream {
    fn words(self) -> (u32, u32) {
        match self {
            Self::Initial => (1, 0),
            Self::Sde(k) => (2, k),
            Self::Ode(k) => (3, k),
            Self::Mask => (4, 0),
            Self::Custom(a, b) => (0x1000 + a, b),
        }
    }
}

/// Fill `out` with standard normal samples for (`seed`, `stream`); element `i` is always the
/// same number, whatever the length asked for.
pub fn fill_normal(seed: u64, stream: NoiseStream, out: &mut [f32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    let (s0, s1) = stream.words();
    for (block, chunk) in out.chunks_mut(4).enumerate() {
        let b = block as u64;
        let r = philox4x32([b as u32, (b >> 32) as u32, s0, s1], key);
        let (z0, z1) = box_muller(r[0], r[1]);
        let (z2, z3) = box_muller(r[2], r[3]);
        for (o, z) in chunk.iter_mut().zip([z0, z1, z2, z3]) {
            *o = z;
        }
    }
}

fn box_muller(a: u32, b: u32) -> (f32, f32) {
    const INV_2_32: f64 = 1.0 / 4_294_967_296.0;
    let u1 = (a as f64 + 1.0) * INV_2_32; // (0, 1]: ln never sees 0
    let u2 = b as f64 * INV_2_32;
    let r = libm::sqrt(-2.0 * libm::log(u1));
    let th = 2.0 * std::f64::consts::PI * u2;
    ((r * libm::cos(th)) as f32, (r * libm::sin(th)) as f32)
}

/// Standard normal noise as a `[1, frames, channels]` f32 tensor on `device`.
pub fn normal_tensor(
    seed: u64,
    stream: NoiseStream,
    frames: usize,
    channels: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut v = vec![0f32; frames * channels];
    fill_normal(seed, stream, &mut v);
    Ok(Tensor::from_vec(v, (1, frames, channels), device)?)
}

/// A uniform in [0, 1) for (`seed`, `stream`, `index`), for backends that need portable dice.
pub fn uniform(seed: u64, stream: NoiseStream, index: u64) -> f64 {
    let key = [seed as u32, (seed >> 32) as u32];
    let (s0, s1) = stream.words();
    let r = philox4x32([index as u32, (index >> 32) as u32, s0, s1], key);
    r[0] as f64 / 4_294_967_296.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published known answers: Random123's `tests/kat_vectors`, the three `philox4x32 10`
    /// lines (github.com/DEShawResearch/random123, commit 9545ff64, lines 27–29).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn prefix_stable_and_stream_separated() {
        let mut a = vec![0f32; 10];
        let mut b = vec![0f32; 7];
        fill_normal(42, NoiseStream::Initial, &mut a);
        fill_normal(42, NoiseStream::Initial, &mut b);
        assert_eq!(&a[..7], &b[..]);
        let mut c = vec![0f32; 10];
        fill_normal(42, NoiseStream::Sde(0), &mut c);
        assert_ne!(a, c);
        fill_normal(43, NoiseStream::Initial, &mut c);
        assert_ne!(a, c);
    }

    /// Pins the noise itself, so any change to the generator, the stream words or Box–Muller
    /// (which would silently change every recorded session) fails. The values come from an
    /// independent oracle, `tools/rng-golden.py`: Philox4x32-10 written in Python from the
    /// published algorithm (checked there against the Random123 vectors above) and Box–Muller in
    /// 60-digit arithmetic, rounded once to f32. Odd indices are the sine half of Box–Muller.
    #[test]
    fn golden_values() {
        // (seed, stream, Philox words of block 0, the first 8 normals as f32 bits)
        let cases: [(u64, NoiseStream, [u32; 4], [u32; 8]); 2] = [
            (
                7,
                NoiseStream::Initial,
                [0x7eba_ed90, 0x2bf6_d9af, 0x4fac_3b2b, 0x39ac_ec6c],
                // 0.559921830, 1.04533334, 0.236221082, 1.50953587,
                // 0.286976692, -0.395832749, -0.415976136, 0.595941232
                [
                    0x3f0f_5709,
                    0x3f85_cd7c,
                    0x3e71_e3f0,
                    0x3fc1_3879,
                    0x3e92_ee9c,
                    0xbeca_aa97,
                    0xbed4_fad3,
                    0x3f18_8f9b,
                ],
            ),
            (
                0x0123_4567_89ab_cdef,
                NoiseStream::Sde(3),
                [0xd26f_1935, 0x93ad_9080, 0x2b42_cdac, 0x2d54_7824],
                // -0.554493157, -0.290771910, 0.834162659, 1.69116136,
                // 1.83612401, 0.943712280, 0.958666287, 0.0706567186
                [
                    0xbf0d_f343,
                    0xbe94_e00e,
                    0x3f55_8baf,
                    0x3fd8_77fa,
                    0x3feb_061d,
                    0x3f71_9721,
                    0x3f75_6b27,
                    0x3d90_b478,
                ],
            ),
        ];
        for (seed, stream, words, normals) in cases {
            let (s0, s1) = stream.words();
            let key = [seed as u32, (seed >> 32) as u32];
            assert_eq!(philox4x32([0, 0, s0, s1], key), words, "{stream:?}");
            let mut v = [0f32; 8];
            fill_normal(seed, stream, &mut v);
            assert_eq!(
                v.map(f32::to_bits),
                normals,
                "seed {seed:#x} {stream:?}: {v:?}"
            );
        }
        assert_eq!(
            uniform(7, NoiseStream::Initial, 0),
            0x7eba_ed90 as f64 / 4_294_967_296.0
        );
    }

    #[test]
    fn moments_are_standard_normal() {
        let mut v = vec![0f32; 200_000];
        fill_normal(1, NoiseStream::Initial, &mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }
}
