//! `demon render` as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn demon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_demon"))
        .args(args)
        .output()
        .expect("run demon")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("demon-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure for `{needle}`, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "`{stderr}` should mention `{needle}`"
    );
}

#[test]
fn bad_input_is_a_clear_error_without_a_panic() {
    let out = tmp("bad.wav");
    let o = out.to_str().unwrap();
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--curve",
            "velocity_scale=nan",
            "--out",
            o,
            "-q",
        ]),
        "not finite",
    );
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--curve",
            "velocity_scale=",
            "--out",
            o,
            "-q",
        ]),
        "empty",
    );
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--curve",
            "velocity_scale=raw:1,nan",
            "--out",
            o,
            "-q",
        ]),
        "velocity_scale",
    );
    assert_clean_failure(
        &demon(&["render", "--seconds", "0", "--out", o, "-q"]),
        "--seconds",
    );
    assert_clean_failure(
        &demon(&["render", "--seconds", "100000", "--out", o, "-q"]),
        "limit",
    );
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--solver",
            "rk4",
            "--out",
            o,
            "-q",
        ]),
        "unknown solver",
    );
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--cfg-mode",
            "both",
            "--out",
            o,
            "-q",
        ]),
        "cfg",
    );
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--source",
            "/nonexistent/song.wav",
            "--out",
            o,
            "-q",
        ]),
        "/nonexistent/song.wav",
    );
    let text = tmp("notes.txt");
    std::fs::write(&text, "these are not samples").unwrap();
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--source",
            text.to_str().unwrap(),
            "--out",
            o,
            "-q",
        ]),
        "not a supported audio file",
    );
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--source",
            "library:polka",
            "--out",
            o,
            "-q",
        ]),
        "unknown library style",
    );
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--key",
            "Q minor",
            "--out",
            o,
            "-q",
        ]),
        "key",
    );
    assert_clean_failure(
        &demon(&["render", "--seconds", "2", "--depth", "0", "--out", o, "-q"]),
        "depth",
    );
    assert!(!out.exists(), "nothing written on failure");
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn takes_are_byte_identical_at_depth_1_and_8() {
    let a = tmp("d1.wav");
    let b = tmp("d8.wav");
    for (path, depth) in [(&a, "1"), (&b, "8")] {
        let out = demon(&[
            "render",
            "--prompt",
            "techno",
            "--seconds",
            "6",
            "--takes",
            "8",
            "--depth",
            depth,
            "--guidance",
            "2",
            "--out",
            path.to_str().unwrap(),
            "-q",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for k in 1..=8 {
        let name = |p: &Path| {
            p.with_file_name(format!(
                "{}-{k:02}.wav",
                p.file_stem().unwrap().to_str().unwrap()
            ))
        };
        let (x, y) = (bytes(&name(&a)), bytes(&name(&b)));
        assert!(x.len() > 6 * 48_000 * 4, "take {k} too short");
        assert!(x == y, "take {k} differs between depth 1 and depth 8");
    }
}

#[test]
fn a_previous_render_is_an_exact_source() {
    let first = tmp("first.wav");
    let again = tmp("again.wav");
    let o = demon(&[
        "render",
        "--prompt",
        "hip hop",
        "--seconds",
        "5",
        "--out",
        first.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Denoise 0 returns the source: the same audio, sample for sample.
    let o = demon(&[
        "render",
        "--source",
        first.to_str().unwrap(),
        "--denoise",
        "0",
        "--out",
        again.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same samples and latent; only the INFO chunk differs (it names each render's prompt).
    let samples = |p: &Path| {
        demon_audio::load_file(p, demon_audio::LoadLimits::default())
            .unwrap()
            .channels
    };
    assert_eq!(samples(&first), samples(&again));
    let latent = |p: &Path| demon_audio::read_embedded_latent(p).unwrap().unwrap();
    assert_eq!(latent(&first), latent(&again));
    let info = demon_audio::read_wav_info(&first).unwrap().unwrap();
    assert_eq!(
        info.software,
        format!("demon {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        info.comment
            .starts_with("prompt \"hip hop\"; style hip hop; 90 bpm; A minor; seed 42"),
        "{}",
        info.comment
    );
    // A library song works as a source too, and partial denoise keeps its length.
    let lib = tmp("lib.wav");
    let o = demon(&[
        "render",
        "--prompt",
        "funk",
        "--source",
        "library:funk:2",
        "--seconds",
        "4",
        "--denoise",
        "0.5",
        "--curve",
        "sde_denoise=ramp:0:1",
        "--solver",
        "sde",
        "--out",
        lib.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(bytes(&lib).len() > 4 * 48_000 * 4);
}

#[test]
fn a_render_from_a_source_says_what_was_measured_and_its_wav_says_what_was_used() {
    let (src, out) = (tmp("measured-src.wav"), tmp("measured-out.wav"));
    let o = demon(&[
        "render",
        "--prompt",
        "funk",
        "--seconds",
        "16",
        "--out",
        src.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A prompt that names no tempo: the source's measured 108 BPM conditions the render.
    let o = demon(&[
        "render",
        "--prompt",
        "house",
        "--source",
        src.to_str().unwrap(),
        "--denoise",
        "0.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("source "))
        .unwrap_or_else(|| panic!("no analysis line in {err}"));
    assert!(
        line.contains("108.0 BPM") && line.contains("lends the prompt 108 BPM"),
        "{line}"
    );
    let info = demon_audio::read_wav_info(&out).unwrap().unwrap();
    assert!(
        info.comment
            .starts_with("prompt \"house\"; style house; 108 bpm;"),
        "the WAV names the tempo used, not house's 124: {}",
        info.comment
    );
    // Quiet renders print nothing.
    let o = demon(&[
        "render",
        "--prompt",
        "house",
        "--source",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for p in [src, out] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn the_dcw_wavelet_is_chosen_by_name() {
    let (haar, sym4) = (tmp("dcw-haar.wav"), tmp("dcw-sym4.wav"));
    let render = |out: &Path, wavelet: &str| {
        demon(&[
            "render",
            "--prompt",
            "techno",
            "--seconds",
            "4",
            "--curve",
            "dcw=0.5",
            "--dcw-wavelet",
            wavelet,
            "--out",
            out.to_str().unwrap(),
            "-q",
        ])
    };
    for (out, w) in [(&haar, "haar"), (&sym4, "sym4")] {
        let o = render(out, w);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let samples = |p: &Path| {
        demon_audio::load_file(p, demon_audio::LoadLimits::default())
            .unwrap()
            .channels
    };
    assert_ne!(samples(&haar), samples(&sym4), "the wavelet is heard");
    let o = render(&haar, "db99");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--dcw-wavelet db99") && err.contains("sym2..sym8"),
        "{err}"
    );
    for p in [haar, sym4] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn bench_options_are_checked_before_measuring() {
    let cases: [(&[&str], &str); 6] = [
        (&["bench", "--only", "foo"], "unknown bench section `foo`"),
        (
            &["bench", "--only", "decode", "--plot", "x.png"],
            "--plot draws the ticks section",
        ),
        (
            &["bench", "--only", "model"],
            "the model section measures ACE-Step",
        ),
        (
            &["bench", "--seconds", "NaN"],
            "--seconds must be in 8..=600",
        ),
        (&["bench", "--depths", "0"], "--depths must list depths"),
        (
            &["bench", "--backend", "acestep", "--model-sizes", "huge"],
            "model size `huge`",
        ),
    ];
    for (args, needle) in cases {
        assert_clean_failure(&demon(args), needle);
    }
    assert_clean_failure(
        &demon(&["bench", "--compute", "cuda"]),
        "--compute and --matmul are for --backend acestep",
    );
    assert_clean_failure(
        &demon(&["bench", "--backend", "acestep", "--matmul", "bf16"]),
        "needs --compute cuda",
    );
    assert_clean_failure(
        &demon(&["bench", "--backend", "acestep", "--matmul", "f8"]),
        "matmul dtype `f8`",
    );
}

/// `--compute cuda` in a build without the `cuda` feature says, once, how to get a CUDA build.
#[cfg(not(feature = "cuda"))]
#[test]
fn compute_cuda_in_a_cpu_build_says_how_to_get_a_cuda_build() {
    for args in [
        &[
            "bench",
            "--backend",
            "acestep",
            "--random-model",
            "turbo-2b",
            "--compute",
            "cuda",
        ][..],
        &[
            "bench",
            "--backend",
            "acestep",
            "--random-model",
            "turbo-2b",
            "--compute",
            "cuda:1",
            "--only",
            "ticks",
        ][..],
    ] {
        let out = demon(args);
        assert_clean_failure(&out, "built without CUDA");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--features cuda") && stderr.contains("scripts/gpu-bundle.sh"),
            "{stderr}"
        );
        assert_eq!(
            stderr.matches("built without CUDA").count(),
            1,
            "printed once: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

/// The tiny ACE-Step fixture (random weights in the published layouts) through the whole
/// pipeline: prompt → Qwen3 → DiT steps in the ring → Oobleck decode → WAV.
#[test]
fn acestep_renders_a_wav_from_either_layout() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demon-acestep/tests/fixtures");
    // One render of 4 s at depth 2 from `layout`, with `extra` flags; returns the WAV's path.
    let render = |layout: &str, extra: &[&str], name: &str| -> PathBuf {
        let out = tmp(name);
        let weights = fixtures.join("weights").join(layout);
        let mut args = vec![
            "render",
            "--backend",
            "acestep",
            "--weights",
            weights.to_str().unwrap(),
            "--prompt",
            "synthwave, 110 bpm",
            "--seconds",
            "4",
            "--depth",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let r = demon(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        out
    };
    let mut wavs = Vec::new();
    for layout in ["original", "diffusers"] {
        let out = render(layout, &[], &format!("ace-{layout}.wav"));
        let audio = demon_audio::load_file(&out, demon_audio::LoadLimits::default()).unwrap();
        // The tiny fixture's VAE runs at 300 Hz (hop 12, 25 latent frames per second); the
        // published one at 48 kHz.
        assert_eq!(audio.sample_rate, 300);
        assert_eq!(audio.channels.len(), 2);
        assert_eq!(audio.channels[0].len(), 4 * 300);
        let peak = audio
            .channels
            .iter()
            .flatten()
            .fold(0f32, |m, x| m.max(x.abs()));
        assert!(peak > 0.01, "silent render (peak {peak})");
        wavs.push(bytes(&out));
    }
    assert!(
        wavs[0] == wavs[1],
        "the two layouts rendered different files"
    );
    // A LoRA adapter changes the result.
    let lora = format!("{}=1.5", fixtures.join("lora/peft").display());
    let out = render("original", &["--lora", &lora], "ace-lora.wav");
    assert!(bytes(&out) != wavs[0], "the LoRA changed nothing");
}

/// Mean absolute difference of two WAVs' samples (same length).
fn wav_distance(a: &Path, b: &Path) -> f64 {
    let load = |p: &Path| demon_audio::load_file(p, demon_audio::LoadLimits::default()).unwrap();
    let (x, y) = (load(a), load(b));
    let (x, y) = (&x.channels[0], &y.channels[0]);
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(y)
        .map(|(p, q)| (p - q).abs() as f64)
        .sum::<f64>()
        / x.len() as f64
}

#[test]
fn x0_target_strength_pulls_a_render_toward_its_source_and_needs_one() {
    let o = tmp("x0-none.wav");
    // Without a source there is no x0 target: the flag is refused, and the message says so.
    assert_clean_failure(
        &demon(&[
            "render",
            "--seconds",
            "2",
            "--curve",
            "x0_target_strength=1",
            "--out",
            o.to_str().unwrap(),
            "-q",
        ]),
        "x0 target",
    );
    assert!(!o.exists());
    // With a source, the source is the target: full strength pulls the render onto it.
    let render = |name: &str, extra: &[&str]| -> PathBuf {
        let out = tmp(name);
        let mut args = vec![
            "render",
            "--prompt",
            "techno, dark",
            "--source",
            "library:ambient:1",
            "--seconds",
            "4",
            "--out",
            out.to_str().unwrap(),
            "-q",
        ];
        args.extend_from_slice(extra);
        let r = demon(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        out
    };
    let source = render("x0-source.wav", &["--denoise", "0"]);
    let plain = render("x0-plain.wav", &["--denoise", "0.9"]);
    let pulled = render(
        "x0-pulled.wav",
        &["--denoise", "0.9", "--curve", "x0_target_strength=1"],
    );
    assert!(bytes(&plain) != bytes(&pulled), "the curve changed nothing");
    let (d_plain, d_pulled) = (
        wav_distance(&plain, &source),
        wav_distance(&pulled, &source),
    );
    println!("distance to the source: plain {d_plain:.4}, pulled {d_pulled:.4}");
    assert!(
        d_pulled < 0.5 * d_plain,
        "not pulled toward the source: plain {d_plain:.4}, pulled {d_pulled:.4}"
    );
}
