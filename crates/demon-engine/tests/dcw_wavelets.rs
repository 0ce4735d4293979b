//! DCW's wavelets against PyWavelets (fixture from `tools/gen_dcw_wavelets.py`, mode "zero").

use candle_core::{DType, Device, Tensor};
use demon_engine::lane::{DcwMode, DcwSettings};
use demon_engine::wavelet::{Wavelet, dwt_forward, dwt_inverse};
use demon_engine::{Curve, solver};

#[derive(serde::Deserialize)]
struct Case {
    wavelet: String,
    x: Vec<f64>,
    low: Vec<f64>,
    high: Vec<f64>,
    inverse_of_half_low_double_high: Vec<f64>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pywt_dwt.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `[1, T, 2]`: the case's signal and its negative scaled by 3 (channels are independent).
fn two_channels(v: &[f64]) -> Tensor {
    let data: Vec<f64> = v.iter().flat_map(|x| [*x, -3.0 * x]).collect();
    Tensor::from_vec(data, (1, v.len(), 2), &Device::Cpu).unwrap()
}

fn channel(t: &Tensor, c: usize) -> Vec<f64> {
    let dims = t.dims().to_vec();
    let t = t.reshape((dims[1], *dims.last().unwrap())).unwrap();
    t.narrow(1, c, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn forward_and_inverse_match_pywavelets() {
    let f = fixture();
    let mut seen = std::collections::HashSet::new();
    for case in &f.cases {
        let w: Wavelet = case.wavelet.parse().unwrap();
        seen.insert(w);
        let what = format!("{} N={}", case.wavelet, case.x.len());
        let x = two_channels(&case.x);
        let (lo, hi) = dwt_forward(&x, w).unwrap();
        close(&channel(&lo, 0), &case.low, 1e-12, &format!("{what} low"));
        close(&channel(&hi, 0), &case.high, 1e-12, &format!("{what} high"));
        let neg: Vec<f64> = case.low.iter().map(|v| -3.0 * v).collect();
        close(&channel(&lo, 1), &neg, 1e-11, &format!("{what} low ch1"));
        // The inverse of scaled bands, at PyWavelets' output length.
        let n_out = case.inverse_of_half_low_double_high.len();
        let back = dwt_inverse(
            &lo.affine(0.5, 0.0).unwrap(),
            &hi.affine(2.0, 0.0).unwrap(),
            n_out,
            w,
        )
        .unwrap();
        close(
            &channel(&back, 0),
            &case.inverse_of_half_low_double_high,
            1e-12,
            &format!("{what} inverse"),
        );
        // Perfect reconstruction at the signal's own length.
        let round = dwt_inverse(&lo, &hi, case.x.len(), w).unwrap();
        close(
            &channel(&round, 0),
            &case.x,
            1e-9,
            &format!("{what} round trip"),
        );
    }
    assert_eq!(
        seen.len(),
        Wavelet::ALL.len(),
        "every wavelet has fixture cases"
    );
}

#[test]
fn generic_transform_agrees_with_the_haar_kernels() {
    let x = Tensor::from_vec(vec![1f32, 3.0, 5.0, 9.0, 2.0], (1, 5, 1), &Device::Cpu).unwrap();
    let (hl, hh) = solver::haar_forward(&x).unwrap();
    let (gl, gh) = dwt_forward(&x, Wavelet::Haar).unwrap();
    let d = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(d(&hl, &gl) < 1e-6 && d(&hh, &gh) < 1e-6);
}

fn dcw_settings(wavelet: Wavelet) -> DcwSettings {
    DcwSettings {
        enabled: true,
        mode: DcwMode::Double,
        scaler: Curve::constant(0.1),
        high_scaler: Curve::constant(0.05),
        wavelet,
    }
}

#[test]
fn dcw_with_daubechies_and_symlets() {
    let t = 37;
    let xs: Vec<f32> = (0..t * 3).map(|i| ((i as f32) * 0.37).sin()).collect();
    let ys: Vec<f32> = (0..t * 3)
        .map(|i| ((i as f32) * 0.11).cos() * 0.5)
        .collect();
    let x = Tensor::from_vec(xs, (1, t, 3), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(ys, (1, t, 3), &Device::Cpu).unwrap();
    let haar = solver::dcw(&x, &y, 0.4, &dcw_settings(Wavelet::Haar)).unwrap();
    for w in [
        Wavelet::Db2,
        Wavelet::Db3,
        Wavelet::Db4,
        Wavelet::Sym2,
        Wavelet::Sym3,
        Wavelet::Sym4,
    ] {
        let out = solver::dcw(&x, &y, 0.4, &dcw_settings(w)).unwrap();
        assert_eq!(out.dims(), &[1, t, 3]);
        // The correction is x + IDWT(t·s·L(d), (1 − t)·s_h·H(d)) with d = x − y, by linearity.
        let d = (&x - &y).unwrap().to_dtype(DType::F64).unwrap();
        let (dl, dh) = dwt_forward(&d, w).unwrap();
        let corr = dwt_inverse(
            &dl.affine(0.4 * 0.1, 0.0).unwrap(),
            &dh.affine(0.6 * 0.05, 0.0).unwrap(),
            t,
            w,
        )
        .unwrap();
        let want = (x.to_dtype(DType::F64).unwrap() + corr).unwrap();
        let diff = (out.to_dtype(DType::F64).unwrap() - want)
            .unwrap()
            .abs()
            .unwrap();
        let max: f64 = diff
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(max < 1e-5, "{w:?}: {max}");
        // Another wavelet gives another correction.
        let delta: f32 = (&out - &haar)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(delta > 1e-4, "{w:?} equals Haar");
        // A zero correction leaves the state bit for bit.
        let same = solver::dcw(&x, &x, 0.4, &dcw_settings(w)).unwrap();
        assert_eq!(
            same.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}

#[test]
fn wavelet_on_the_wire() {
    let s: DcwSettings = serde_json::from_str(r#"{"wavelet":"sym4"}"#).unwrap();
    assert_eq!(s.wavelet, Wavelet::Sym4);
    assert!(s.enabled);
    let s: DcwSettings = serde_json::from_str(r#"{"mode":"low"}"#).unwrap();
    assert_eq!(s.wavelet, Wavelet::Haar);
    assert!(serde_json::from_str::<DcwSettings>(r#"{"wavelet":"morlet"}"#).is_err());
    let back: DcwSettings =
        serde_json::from_str(&serde_json::to_string(&dcw_settings(Wavelet::Db3)).unwrap()).unwrap();
    assert_eq!(back, dcw_settings(Wavelet::Db3));
    assert_eq!("DB4".parse::<Wavelet>().unwrap(), Wavelet::Db4);
    let e = "coif9".parse::<Wavelet>().unwrap_err().to_string();
    assert!(e.contains("coif9") && e.contains("sym2"), "{e}");
}
