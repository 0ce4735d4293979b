//! `demon inspect weights` and `demon debug forward` as a user runs them, on a folder holding
//! only a diffusers `transformer/` (issue 11 item 12).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use demon_acestep::weights::SafetensorsFile;

fn demon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_demon"))
        .args(args)
        .output()
        .expect("run demon")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demon-acestep/tests/fixtures")
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

#[test]
fn a_transformer_folder_alone_is_inspected_and_runs_the_dit() {
    let root = std::env::temp_dir().join(format!("demon-cli-tools-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    copy_dir(
        &fixtures().join("weights/diffusers/transformer"),
        &root.join("transformer"),
    );
    let weights = root.to_str().unwrap();

    let o = demon(&["inspect", "weights", weights]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("transformer"), "{stdout}");
    assert!(stdout.contains("missing vae"), "{stdout}");
    assert!(stdout.contains("missing text encoder"), "{stdout}");

    let out = root.join("out.safetensors");
    let inputs = fixtures().join("dit_inputs.safetensors");
    let o = demon(&[
        "debug",
        "forward",
        "dit",
        "--weights",
        weights,
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = SafetensorsFile::open(&out)
        .unwrap()
        .load("out", &Device::Cpu)
        .unwrap();
    let want = SafetensorsFile::open(&fixtures().join("reference.safetensors"))
        .unwrap()
        .load("dit_out", &Device::Cpu)
        .unwrap();
    let diff = (&got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff <= 1e-4,
        "dit on transformer/ alone: max abs diff {diff}"
    );

    // A component the folder lacks is a clean error saying what it holds.
    let o = demon(&[
        "debug",
        "forward",
        "vae-decode",
        "--weights",
        weights,
        "--inputs",
        fixtures()
            .join("vae_decode_inputs.safetensors")
            .to_str()
            .unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("present: dit"), "{stderr}");
    let _ = std::fs::remove_dir_all(root);
}
