//! Time the engine's own work per slot step (a model that costs nothing).
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use demon_engine::testing::ConstantDenoiser;
use demon_engine::*;

fn main() {
    let (t, c) = (1500, 64);
    for (name, dcw) in [
        ("dcw on", DcwSettings::default()),
        ("dcw off", DcwSettings::off()),
    ] {
        let mut d = ConstantDenoiser {
            value: 0.1,
            channels: c,
            device: Device::Cpu,
        };
        let mut p = StreamPipeline::new(8, c, 0, Device::Cpu).unwrap();
        p.set_lane(SharedLane {
            dcw,
            ..Default::default()
        })
        .unwrap();
        let ctx = Tensor::zeros((1, t, 0), DType::F32, &Device::Cpu).unwrap();
        let cond = testing::PointMassDenoiser::conditioning(0.0);
        for k in 0..16 {
            p.submit(SlotRequest::new(cond.clone(), ctx.clone(), t, k))
                .unwrap();
            p.tick(&mut d).unwrap();
        }
        let t0 = Instant::now();
        let n = 64;
        let mut steps = 0;
        for k in 0..n {
            p.submit(SlotRequest::new(cond.clone(), ctx.clone(), t, 100 + k))
                .unwrap();
            steps += p.tick(&mut d).unwrap().active_slots;
        }
        let dt = t0.elapsed().as_secs_f64();
        println!("{name}: {:.3} ms per slot step", dt * 1000.0 / steps as f64);
    }
}
