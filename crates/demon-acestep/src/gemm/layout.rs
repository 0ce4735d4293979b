//! What the packed weights of [`super::PackedMatrix`] are made of, shared by the packing code
//! and the microkernels (`kernels.rs`): the panel width and the element precision, with the
//! bf16 conversions. Its own module so that the kernels depend on it and not on their parent.

use half::bf16;

/// Columns per packed panel (two 16-lane AVX-512 vectors).
pub const NR: usize = 32;

/// Storage precision of a packed weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// f32 weights, f32 products.
    #[default]
    F32,
    /// bf16 weights and bf16-rounded activations, products summed in f32 (`vdpbf16ps` on CPUs
    /// with avx512_bf16; a portable loop elsewhere).
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("CPU precision `{other}`: use f32 or bf16")),
        }
    }
}

/// f32 → bf16 bits, round to nearest even (NaN stays NaN).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}
