//! Denoiser contract: row i of the output depends only on row i. Every row computed alone must
//! be bit-identical to the same row inside batches of 1..8 mixed rows (different latents, times,
//! conditionings of different lengths, contexts).

mod common;

use candle_core::{Device, Tensor};
use common::*;
use demon_acestep::AceStep;
use demon_engine::{Conditioning, DenoiseBatch, Denoiser};

#[test]
fn rows_are_independent_of_the_batch() {
    let dev = Device::Cpu;
    let m = AceStep::load(&original(), &dev).unwrap();
    let (mut den, _, _) = m.into_parts();
    let frames = 11;
    let conds: Vec<Conditioning> = (0..8)
        .map(|i| {
            Conditioning::new(Tensor::randn(0f32, 1.0, (1, 3 + 2 * i, 32), &dev).unwrap()).unwrap()
        })
        .collect();
    let ctxs: Vec<Tensor> = (0..8)
        .map(|_| Tensor::randn(0f32, 1.0, (1, frames, 16), &dev).unwrap())
        .collect();
    let xs: Vec<Tensor> = (0..8)
        .map(|_| Tensor::randn(0f32, 1.0, (1, frames, 8), &dev).unwrap())
        .collect();
    let ts: Vec<f32> = (0..8).map(|i| 1.0 - i as f32 * 0.11).collect();

    let alone: Vec<Vec<u32>> = (0..8)
        .map(|i| {
            let v = den
                .velocity(&DenoiseBatch {
                    x: xs[i].clone(),
                    t: vec![ts[i]],
                    conditions: vec![&conds[i]],
                    contexts: vec![&ctxs[i]],
                    sources: Vec::new(),
                })
                .unwrap();
            bits(&v)
        })
        .collect();
    for b in 1..=8 {
        // A rotating mix of rows so each batch size sees different neighbours.
        let rows: Vec<usize> = (0..b).map(|k| (k * 3 + b) % 8).collect();
        let x = Tensor::cat(&rows.iter().map(|&i| &xs[i]).collect::<Vec<_>>(), 0).unwrap();
        let batch = DenoiseBatch {
            x,
            t: rows.iter().map(|&i| ts[i]).collect(),
            conditions: rows.iter().map(|&i| &conds[i]).collect(),
            contexts: rows.iter().map(|&i| &ctxs[i]).collect(),
            sources: Vec::new(),
        };
        let v = den.velocity(&batch).unwrap();
        for (k, &i) in rows.iter().enumerate() {
            assert_eq!(
                bits(&v.narrow(0, k, 1).unwrap()),
                alone[i],
                "batch {b}, row {k} (input {i})"
            );
        }
    }
    assert!(den.dit().cached_conditionings() <= 8);
}
