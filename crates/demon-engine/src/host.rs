//! Reads of tensor values back to the host, counted.
//!
//! On a GPU every read of a tensor's values (`to_vec1`, `to_scalar`, …) waits for the device to
//! finish everything queued before it: one such read inside a tick stalls the whole pipeline. The
//! tick path (the pipeline, the solver kernels and a backend's `Denoiser::velocity`) must not
//! read at all. Code of the engine and of the backends that does need values on the host (setup,
//! decoding finished audio, tests) reads through these functions, so [`reads`] counts them, and a
//! test runs ticks and checks that the count did not move (`demon-acestep`'s
//! `tests/host_reads.rs`, which also checks that the tick-path sources read through nothing else).
//!
//! The counter is process-wide (a read on another thread counts too) and costs one relaxed atomic
//! add per read; it is always on.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Tensor, WithDType};

use crate::error::Result;

static READS: AtomicU64 = AtomicU64::new(0);

/// Host reads since the process started.
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}

fn count() {
    READS.fetch_add(1, Ordering::Relaxed);
}

/// The values of a rank-0 tensor, counted.
pub fn to_scalar<T: WithDType>(t: &Tensor) -> Result<T> {
    count();
    Ok(t.to_scalar()?)
}

/// The values of a rank-1 tensor, counted.
pub fn to_vec1<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    count();
    Ok(t.to_vec1()?)
}

/// The values of a rank-2 tensor, counted.
pub fn to_vec2<T: WithDType>(t: &Tensor) -> Result<Vec<Vec<T>>> {
    count();
    Ok(t.to_vec2()?)
}

/// The values of a rank-3 tensor, counted.
pub fn to_vec3<T: WithDType>(t: &Tensor) -> Result<Vec<Vec<Vec<T>>>> {
    count();
    Ok(t.to_vec3()?)
}

/// Every value of a tensor of any rank, flattened, counted.
pub fn flat<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    count();
    Ok(t.flatten_all()?.to_vec1()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn every_read_is_counted() {
        let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let before = reads();
        assert_eq!(to_vec1::<f32>(&t).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(flat::<f32>(&t.reshape((1, 3)).unwrap()).unwrap().len(), 3);
        assert_eq!(to_scalar::<f32>(&t.sum_all().unwrap()).unwrap(), 6.0);
        // Other tests of this binary may read concurrently: at least these three.
        assert!(reads() - before >= 3);
    }
}
