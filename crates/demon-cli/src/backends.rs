//! Choosing and building a backend: the built-in sketch, or ACE-Step from a weights folder.

use anyhow::{Result, bail};
use candle_core::Device;
use demon_engine::BackendSet;
use demon_sketch::{SketchCodec, SketchConditioner, SketchDenoiser};

/// Backend names accepted by `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// The weights-free built-in backend (real time on 2 CPU cores).
    Sketch,
    /// ACE-Step 1.5 (needs `--weights DIR`).
    Acestep,
}

/// The sketch backend on the CPU.
pub fn sketch() -> BackendSet {
    let device = Device::Cpu;
    BackendSet {
        name: "sketch".into(),
        denoiser: Box::new(SketchDenoiser::new(device.clone())),
        codec: Box::new(SketchCodec::new(device.clone())),
        conditioner: Box::new(SketchConditioner::new(device)),
    }
}

/// Build the requested backend.
pub fn build(kind: BackendKind, weights: Option<&std::path::Path>) -> Result<BackendSet> {
    match kind {
        BackendKind::Sketch => {
            if weights.is_some() {
                bail!("--weights is for --backend acestep; the sketch backend needs no weights");
            }
            Ok(sketch())
        }
        BackendKind::Acestep => bail!("the ACE-Step backend is not built into this binary yet"),
    }
}
