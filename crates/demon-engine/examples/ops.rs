use candle_core::{Device, Tensor};
use std::time::Instant;
fn time(name: &str, f: &mut dyn FnMut()) {
    f();
    let t0 = Instant::now();
    for _ in 0..200 {
        f();
    }
    println!("{name}: {:.1} us", t0.elapsed().as_secs_f64() * 1e6 / 200.0);
}
fn main() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 1500, 64), &d).unwrap();
    let y = Tensor::randn(0f32, 1.0, (1, 1500, 64), &d).unwrap();
    let k = Tensor::randn(0f32, 1.0, (1, 1500, 1), &d).unwrap();
    time("affine", &mut || {
        x.affine(0.5, 0.0).unwrap();
    });
    time("add", &mut || {
        (&x + &y).unwrap();
    });
    time("broadcast_mul [1,T,1]", &mut || {
        x.broadcast_mul(&k).unwrap();
    });
    time("cat 8 rows", &mut || {
        Tensor::cat(&[&x, &y, &x, &y, &x, &y, &x, &y], 0).unwrap();
    });
    time("narrow row", &mut || {
        x.narrow(0, 0, 1).unwrap();
    });
    let r = x.reshape((1, 750, 2, 64)).unwrap();
    time("narrow dim2 + add", &mut || {
        let a = r.narrow(2, 0, 1).unwrap();
        let b = r.narrow(2, 1, 1).unwrap();
        (&a + &b).unwrap();
    });
    time("cat dim2", &mut || {
        let a = r.narrow(2, 0, 1).unwrap().contiguous().unwrap();
        Tensor::cat(&[&a, &a], 2).unwrap();
    });
    time("noise", &mut || {
        demon_engine::rng::normal_tensor(1, demon_engine::rng::NoiseStream::Initial, 1500, 64, &d)
            .unwrap();
    });
    time("sqr sum_keepdim(1)", &mut || {
        x.sqr().unwrap().sum_keepdim(1).unwrap();
    });
}
