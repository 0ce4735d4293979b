//! Small deterministic denoisers for tests and for measuring engine overhead without a model.

use candle_core::{Device, Tensor};

use crate::backend::{Conditioning, DenoiseBatch, Denoiser};
use crate::error::Result;

/// The exact denoiser of a point mass: the data distribution is the single latent whose every
/// element equals the mean of the row's conditioning states (plus the mean of its context), so
/// `v = (x − μ) / t`. Each row is computed on its own, so results never depend on the batch.
pub struct PointMassDenoiser {
    pub channels: usize,
    pub context_channels: usize,
    pub device: Device,
    /// Every call's batch size, for tests that check batching.
    pub calls: Vec<usize>,
}

impl PointMassDenoiser {
    pub fn new(channels: usize, context_channels: usize) -> Self {
        Self {
            channels,
            context_channels,
            device: Device::Cpu,
            calls: Vec::new(),
        }
    }

    /// A conditioning whose point mass sits at `mu`.
    pub fn conditioning(mu: f32) -> Conditioning {
        let states = Tensor::full(mu, (1, 2, 4), &Device::Cpu).expect("small tensor");
        Conditioning::new(states).expect("valid shape")
    }
}

impl Denoiser for PointMassDenoiser {
    fn latent_channels(&self) -> usize {
        self.channels
    }
    fn context_channels(&self) -> usize {
        self.context_channels
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> Result<Tensor> {
        self.calls.push(batch.rows());
        let mut rows = Vec::with_capacity(batch.rows());
        for i in 0..batch.rows() {
            let x = batch.x.narrow(0, i, 1)?;
            let mut mu = batch.conditions[i].states.mean_all()?.to_scalar::<f32>()?;
            if self.context_channels > 0 {
                mu += batch.contexts[i].mean_all()?.to_scalar::<f32>()?;
            }
            let t = batch.t[i].max(1e-3) as f64;
            rows.push(x.affine(1.0 / t, -(mu as f64) / t)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
    fn name(&self) -> &str {
        "point-mass"
    }
}

/// Returns the same velocity everywhere: handy for checking the integration formulas.
pub struct ConstantDenoiser {
    pub value: f32,
    pub channels: usize,
    pub device: Device,
}

impl Denoiser for ConstantDenoiser {
    fn latent_channels(&self) -> usize {
        self.channels
    }
    fn context_channels(&self) -> usize {
        0
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> Result<Tensor> {
        Ok(batch.x.ones_like()?.affine(self.value as f64, 0.0)?)
    }
}
