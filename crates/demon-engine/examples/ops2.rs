use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    let d = Device::Cpu;
    let v: Vec<f32> = (0..96000).map(|i| (i as f32).sin()).collect();
    let x = Tensor::from_vec(v.clone(), (1, 1500, 64), &d).unwrap();
    let y = Tensor::from_vec(v, (1, 1500, 64), &d).unwrap();
    for round in 0..3 {
        let t0 = Instant::now();
        for _ in 0..200 {
            (&x + &y).unwrap();
        }
        println!(
            "round {round} add: {:.1} us",
            t0.elapsed().as_secs_f64() * 1e6 / 200.0
        );
        let t0 = Instant::now();
        for _ in 0..200 {
            x.sqr().unwrap().sum_keepdim(1).unwrap();
        }
        println!(
            "round {round} sqr+sum: {:.1} us",
            t0.elapsed().as_secs_f64() * 1e6 / 200.0
        );
    }
}
