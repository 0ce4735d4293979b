//! `demon bench`: the engine's figures, measured on this machine: offline render speed, tick
//! time and generations per second against depth, propagation latency per control class and
//! windowed decode (demon-live's bench), and for ACE-Step the model side (demon-acestep's bench:
//! matmul rate, DiT step and VAE decode times, their share of the matmul rate).

use anyhow::{Result, bail};
use clap::Args;
use demon_acestep::bench::{ModelBenchConfig, ModelSize, model_bench};
use demon_engine::Prompt;
use demon_live::bench::{BenchConfig, knob_to_ear, run as run_bench};
use serde_json::{Value, json};

use crate::args::{BenchSection, ModelSize as CliModelSize, closed};
use crate::backends::{self, BackendArgs};

/// Controls moved per class in the latency section.
const EAR_TRIALS: usize = 16;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Song length for ticks, renders and decode.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Depths for tick time and throughput.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub depths: Vec<usize>,
    /// Denoising steps per generation (S).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Ticks measured per depth (rounded up to whole schedules).
    #[arg(long, default_value_t = 32)]
    pub ticks: usize,
    /// The prompt every measurement generates with.
    #[arg(long, default_value = "house")]
    pub prompt: String,
    /// Also draw tick time and generations per second against depth to this PNG.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Measure nothing: redraw `--plot` from a report saved with `--json`.
    #[arg(long, value_name = "REPORT.json", requires = "plot")]
    pub plot_from: Option<std::path::PathBuf>,
    /// Measurements to run (comma separated): render, ticks, propagation, decode, latency,
    /// model, denoise_curve. Default: render, ticks, propagation, decode and latency (knob-to-ear
    /// per class with a simulated client) for the sketch backend;
    /// model for ACE-Step (the others take hours on a CPU with a full-size model; ask for them
    /// by name). denoise_curve (similarity to the source against denoise 0, 0.1, …, 1 for a
    /// library song, a re-encoded render and a sox recording) runs only when asked for.
    #[arg(long, value_delimiter = ',', value_parser = closed::<BenchSection>("bench section"))]
    pub only: Option<Vec<BenchSection>>,
    /// Model section: sizes (turbo-2b, xl-turbo). With none of --model-sizes, --model-seconds
    /// and --model-batches the section measures a CPU-sized subset: 2B at 10 s for batches
    /// 1, 2, 4, 8 and at 60 s for batch 1, XL at 10 s for batch 1 (only the size of
    /// `--random-model` when it is given).
    #[arg(long, value_delimiter = ',', value_parser = closed::<CliModelSize>("model size"))]
    pub model_sizes: Option<Vec<CliModelSize>>,
    /// Model section: song lengths in seconds (e.g. 10,60,240).
    #[arg(long, value_delimiter = ',')]
    pub model_seconds: Option<Vec<u32>>,
    /// Model section: rows per DiT call (e.g. 1,2,4,8).
    #[arg(long, value_delimiter = ',')]
    pub model_batches: Option<Vec<usize>>,
    /// Model section: audio seconds of the VAE decode (0 skips it).
    #[arg(long, default_value_t = 10.0)]
    pub vae_seconds: f32,
    /// Model section: timed repetitions per case after a warm-up (the best is reported).
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// Model section: rank of the random LoRA adapter whose strength change is timed on the 2B
    /// DiT (every attention projection; 0 skips it).
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// The model section's configuration from the command line.
fn model_config(args: &BenchArgs) -> Result<ModelBenchConfig> {
    let mut cfg = if args.model_sizes.is_none()
        && args.model_seconds.is_none()
        && args.model_batches.is_none()
    {
        ModelBenchConfig::default()
    } else {
        let sizes: Vec<ModelSize> = match &args.model_sizes {
            Some(v) => v.iter().map(|s| ModelSize::from(*s)).collect(),
            None => vec![ModelSize::Turbo2b],
        };
        let seconds = args.model_seconds.clone().unwrap_or_else(|| vec![10]);
        let batches = args.model_batches.clone().unwrap_or_else(|| vec![1]);
        if seconds.iter().any(|s| *s == 0 || *s > 600) {
            bail!("--model-seconds must be in 1..=600");
        }
        if batches
            .iter()
            .any(|b| *b == 0 || *b > demon_engine::MAX_DEPTH)
        {
            bail!("--model-batches must be in 1..={}", demon_engine::MAX_DEPTH);
        }
        ModelBenchConfig::with_cases(&sizes, &seconds, &batches)
    };
    if !(args.vae_seconds.is_finite() && (0.0..=600.0).contains(&args.vae_seconds)) {
        bail!("--vae-seconds must be in 0..=600, got {}", args.vae_seconds);
    }
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    if args.backend.weights.is_some() && args.backend.random_model.is_some() {
        bail!("--random-model and --weights exclude each other");
    }
    if args.lora_rank > 512 {
        bail!("--lora-rank must be in 0..=512, got {}", args.lora_rank);
    }
    cfg.vae_seconds = args.vae_seconds;
    cfg.repeats = args.repeats;
    cfg.lora_rank = args.lora_rank;
    cfg.weights = args.backend.weights.clone();
    cfg.device = args.backend.device()?;
    cfg.matmul_dtype = args.backend.matmul_dtype()?;
    cfg.cpu_precision = args.backend.cpu_precision()?;
    if let Some(size) = args.backend.random_model {
        // `--random-model SIZE` without explicit sizes: measure that size only.
        if args.model_sizes.is_none() {
            let size = ModelSize::from(size);
            cfg.dit_cases.retain(|c| c.size == size);
            if cfg.dit_cases.is_empty() {
                cfg.dit_cases = ModelBenchConfig::with_cases(&[size], &[10], &[1]).dit_cases;
            }
        }
    }
    Ok(cfg)
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let (Some(json), Some(png)) = (&args.plot_from, &args.plot) {
        plot_from_json(json, png)?;
        eprintln!("wrote the plot to {}", png.display());
        return Ok(());
    }
    if !(args.seconds.is_finite() && args.seconds >= 8.0 && args.seconds <= 600.0) {
        bail!("--seconds must be in 8..=600, got {}", args.seconds);
    }
    if args.depths.is_empty()
        || args
            .depths
            .iter()
            .any(|d| *d == 0 || *d > demon_engine::MAX_DEPTH)
    {
        bail!(
            "--depths must list depths in 1..={}",
            demon_engine::MAX_DEPTH
        );
    }
    let acestep = args.backend.backend == backends::BackendKind::Acestep;
    let sections: Vec<String> = match &args.only {
        Some(v) => v.iter().map(|s| s.name().to_string()).collect(),
        None if acestep => vec!["model".to_string()],
        None => ["render", "ticks", "propagation", "decode", "latency"]
            .map(String::from)
            .to_vec(),
    };
    if args.plot.is_some() && !sections.iter().any(|s| s == "ticks") {
        bail!("--plot draws the ticks section; add `ticks` to --only");
    }
    let wants_model = sections.iter().any(|s| s == "model");
    if wants_model && !acestep {
        bail!(
            "the model section measures ACE-Step: use --backend acestep (with --weights DIR or --random-model SIZE)"
        );
    }
    let wants_curve = sections.iter().any(|s| s == "denoise_curve");
    let engine_sections: Vec<String> = sections
        .iter()
        .filter(|s| !["model", "denoise_curve", "latency"].contains(&s.as_str()))
        .cloned()
        .collect();
    let quiet = args.json;
    let mut log = |m: &str| {
        if !quiet {
            eprintln!("… {m}");
        }
    };
    // Validate everything before the (long) measurements start.
    let model_cfg = if wants_model {
        Some(model_config(&args)?)
    } else {
        None
    };
    let report = if engine_sections.is_empty() {
        None
    } else {
        let mut backend = backends::build(&args.backend)?;
        let cfg = BenchConfig {
            seconds: args.seconds,
            steps: args.steps,
            depths: args.depths.clone(),
            measure_ticks: args.ticks,
            prompt: Prompt::tags(args.prompt.clone()),
            sections: engine_sections,
            ..Default::default()
        };
        Some(run_bench(&mut backend.set, &cfg, &mut log)?)
    };
    let ear = if sections.iter().any(|s| s == "latency") {
        // A live core owns its backend: a fresh one, so the other sections' state is not in it.
        let backend = backends::build(&args.backend)?;
        let cfg = BenchConfig {
            steps: args.steps,
            prompt: Prompt::tags(args.prompt.clone()),
            ..Default::default()
        };
        Some(knob_to_ear(backend.set, &cfg, EAR_TRIALS, &mut log)?)
    } else {
        None
    };
    let model = match &model_cfg {
        Some(cfg) => Some(model_bench(cfg, &mut log)?),
        None => None,
    };
    let curve = if wants_curve {
        Some(denoise_curves(&args, &mut log)?)
    } else {
        None
    };
    if args.json {
        let mut out = match &report {
            Some(r) => serde_json::to_value(r)?,
            None => json!({ "backend": args.backend.backend_name() }),
        };
        if let (Some(m), Some(obj)) = (&model, out.as_object_mut()) {
            obj.insert("matmul_gflops".into(), json!(m.matmul_gflops));
            obj.insert("dit_step_ms".into(), serde_json::to_value(&m.dit_step_ms)?);
            obj.insert("dit_roofline_share".into(), json!(m.dit_roofline_share));
            obj.insert("vae_roofline_share".into(), json!(m.vae_roofline_share));
            obj.entry("engine_overhead_share").or_insert(Value::Null);
            obj.insert("model".into(), serde_json::to_value(m)?);
        }
        if let (Some(e), Some(obj)) = (&ear, out.as_object_mut()) {
            obj.insert("knob_to_ear".into(), serde_json::to_value(e)?);
        }
        if let (Some(c), Some(obj)) = (&curve, out.as_object_mut()) {
            obj.insert("denoise_curve".into(), serde_json::to_value(c)?);
        }
        // DEMON_DIT_PROFILE=1: the composed DiT's device-synchronised block times.
        if demon_acestep::dit::composed::profile::enabled()
            && let Some(obj) = out.as_object_mut()
        {
            let blocks = demon_acestep::dit::composed::profile::take();
            obj.insert("dit_profile".into(), serde_json::to_value(blocks)?);
        }
        if let Some(p) = &args.plot
            && let Some(r) = &report
        {
            write_plot(p, r)?;
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(m) = &model {
        print_model(m);
    }
    if let Some(c) = &curve {
        print_curves(c);
    }
    for (class, e) in ear.iter().flatten() {
        println!(
            "knob-to-ear {class:>11} (simulated client): median {:.0} ms, p90 {:.0} ms, max {:.0} ms over {} controls; {:.0} ticks to the first carrying slice (median); lead {:.0} ms; {} late",
            e.median_ms, e.p90_ms, e.max_ms, e.trials, e.ticks_to_slice_median, e.lead_ms, e.late
        );
    }
    let Some(report) = report else {
        return Ok(());
    };
    if let Some(p) = &args.plot {
        write_plot(p, &report)?;
        eprintln!("wrote the plot to {}", p.display());
    }
    println!(
        "backend {}, {:.0} s songs, {} steps",
        report.backend, report.song_seconds, report.steps
    );
    if let Some(r) = report.render_realtime_ratio {
        println!(
            "offline render: {} takes at depth {}: {r:.1}x real time",
            report.render_takes, report.render_depth
        );
    }
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10}",
        "depth", "tick ms", "model ms", "gen/s", "overhead"
    );
    for (d, t) in &report.tick_ms {
        println!(
            "{:>6} {:>10.2} {:>10.2} {:>10.2} {:>9.1}%",
            d,
            t,
            report.model_ms[d],
            report.gen_per_s[d],
            100.0 * report.engine_overhead_share_by_depth[d]
        );
    }
    for (d, o) in &report.shared_lane_onset_ticks {
        println!(
            "depth {d}: shared-lane onset {o} tick(s) ({:.0}% of in-flight slots); per-slot convergence {:.1} ticks (min {}, max {}) = queue wait {:.1} + S",
            100.0 * report.shared_lane_onset_coverage[d],
            report.per_slot_convergence_ticks[d],
            report.per_slot_convergence_ticks_min[d],
            report.per_slot_convergence_ticks_max[d],
            report.per_slot_queue_wait_ticks[d]
        );
    }
    for (class, p) in &report.propagation {
        let mean = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        println!(
            "{class:>20}: onset {} ticks worst, {} mean ({} ms), convergence {} ticks worst, {} mean ({} ms) over {} phases; {}",
            p.onset_ticks.map_or("-".into(), |v| v.to_string()),
            mean(p.onset_ticks_mean),
            p.onset_ms.map_or("-".into(), |v| format!("{v:.0}")),
            p.convergence_ticks.map_or("-".into(), |v| v.to_string()),
            mean(p.convergence_ticks_mean),
            p.convergence_ms.map_or("-".into(), |v| format!("{v:.0}")),
            p.phases,
            p.note
        );
    }
    if let (Some(f), Some(ms)) = (report.receptive_field_frames, report.full_decode_ms) {
        println!(
            "receptive field: {} frames before, {} after; full decode {ms:.1} ms",
            f.before, f.after
        );
    }
    for (k, ms) in &report.windowed_decode_ms {
        println!(
            "keep {k} s: windowed decode {ms:.2} ms, speedup {:.1}x",
            report.windowed_decode_speedup[k]
        );
    }
    Ok(())
}

/// The sox recording of the denoise curve (`make-sox-groove.sh` beside it made it).
const SOX_GROOVE: &[u8] = include_bytes!("../../demon-sketch/tests/fixtures/sox-groove.flac");

/// The denoise-curve section: a library song (sketch only), a re-encoded render of another
/// prompt and a sox recording, each re-generated at denoise 0, 0.1, …, 1 with the bench's
/// prompt and steps.
fn denoise_curves(
    args: &BenchArgs,
    log: &mut dyn FnMut(&str),
) -> Result<demon_live::denoise_curve::CurveReport> {
    use demon_live::denoise_curve as dc;
    let mut backend = backends::build(&args.backend)?.set;
    let defaults = dc::CurveConfig::default();
    let cfg = dc::CurveConfig {
        spec: dc::CurveRender {
            prompt: Prompt::tags(args.prompt.clone()),
            steps: args.steps,
            ..defaults.spec
        },
        ..defaults
    };
    let mut sources = Vec::new();
    if backend.name == "sketch" {
        let cond = demon_sketch::SketchConditioner::default().read(&cfg.spec.prompt)?;
        let style = cond.dominant_style();
        let latent =
            demon_sketch::SketchDenoiser::default().library_song(&cond, style, 1, cfg.frames)?;
        let name = format!("library song {} #1", style.name());
        sources.push(dc::latent_source(&mut backend, &name, latent)?);
    }
    sources.push(dc::rendered_source(&mut backend, "funk", 77, cfg.frames)?);
    let recording = demon_audio::decode_bytes(
        SOX_GROOVE.to_vec(),
        "sox-groove.flac",
        demon_audio::LoadLimits::default(),
    )?
    .to_stereo(backend.codec.sample_rate());
    sources.push(dc::recorded_source(
        &mut backend,
        "sox recording (sox-groove.flac)",
        &recording,
        cfg.frames,
    )?);
    Ok(dc::run(&mut backend, &sources, &cfg, log)?)
}

fn print_curves(r: &demon_live::denoise_curve::CurveReport) {
    println!(
        "denoise curve: \"{}\", {} steps, {} takes per point, {:.0} s sources; correlation with the source (envelope / chroma)",
        r.config.spec.prompt.tags,
        r.config.spec.steps,
        r.config.spec.takes,
        r.config.frames as f64 / demon_live::denoise_curve::FRAMES_PER_SECOND
    );
    for c in &r.curves {
        println!(
            "  {} (codec round trip {:.2} / {:.2}):",
            c.source, c.codec_envelope_correlation, c.codec_chroma_correlation
        );
        let row: Vec<String> = c
            .points
            .iter()
            .map(|p| {
                format!(
                    "{:.1}: {:.2}/{:.2}",
                    p.denoise, p.envelope_correlation, p.chroma_correlation
                )
            })
            .collect();
        println!("    {}", row.join("  "));
    }
}

fn write_plot(p: &std::path::Path, report: &demon_live::bench::BenchReport) -> Result<()> {
    draw_plot(
        p,
        &report.tick_ms,
        &report.gen_per_s,
        &report.backend,
        report.song_seconds,
        report.steps,
    )
}

/// Redraw the plot of a report saved with `--json` (for example one from a GPU machine).
fn plot_from_json(json_path: &std::path::Path, png: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(json_path)
        .with_context(|| format!("reading `{}`", json_path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("`{}` is not JSON", json_path.display()))?;
    let series = |key: &str| -> Result<std::collections::BTreeMap<String, f64>> {
        let obj = v.get(key).and_then(Value::as_object).ok_or_else(|| {
            anyhow::anyhow!(
                "`{}` has no `{key}` object (run the ticks section with --json)",
                json_path.display()
            )
        })?;
        obj.iter()
            .map(|(k, x)| {
                x.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| (k.clone(), f))
                    .ok_or_else(|| anyhow::anyhow!("`{key}.{k}` is not a finite number"))
            })
            .collect()
    };
    let backend = v
        .get("backend")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let seconds = v.get("song_seconds").and_then(Value::as_f64).unwrap_or(0.0);
    let steps = v.get("steps").and_then(Value::as_u64).unwrap_or(0) as usize;
    draw_plot(
        png,
        &series("tick_ms")?,
        &series("gen_per_s")?,
        backend,
        seconds,
        steps,
    )
}

fn draw_plot(
    p: &std::path::Path,
    tick_ms: &std::collections::BTreeMap<String, f64>,
    gen_per_s: &std::collections::BTreeMap<String, f64>,
    backend: &str,
    song_seconds: f64,
    steps: usize,
) -> Result<()> {
    if tick_ms.is_empty() {
        bail!("--plot draws the ticks section; add `ticks` to --only");
    }
    let pts = |m: &std::collections::BTreeMap<String, f64>| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = m
            .iter()
            .filter_map(|(k, x)| k.parse::<f64>().ok().map(|d| (d, *x)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let caption = format!(
        "{} BACKEND, {song_seconds:.0} S SONGS, {steps} STEPS",
        backend.to_uppercase()
    );
    crate::plot::write_depth_plot(p, &pts(tick_ms), &pts(gen_per_s), &caption)
}

fn print_model(m: &demon_acestep::bench::ModelBenchReport) {
    println!(
        "f32 matmul: {:.1} GFLOP/s on {} ({} threads, {} weights)",
        m.matmul_gflops, m.device, m.threads, m.weights
    );
    let weights: Vec<String> = m
        .weight_bytes
        .iter()
        .map(|(k, b)| format!("{k} {:.2} GiB", *b as f64 / (1u64 << 30) as f64))
        .collect();
    println!(
        "CPU kernels: {} ({}{}); weights held: {}",
        m.cpu_precision,
        m.cpu_isa,
        if m.cpu_bf16_native {
            ", native bf16"
        } else {
            ""
        },
        weights.join(", ")
    );
    println!(
        "{:>10} {:>8} {:>6} {:>12} {:>10} {:>9}",
        "model", "seconds", "batch", "DiT step ms", "GFLOP", "share"
    );
    for (size, by_len) in &m.dit_step_ms {
        for (len, by_batch) in by_len {
            for (batch, ms) in by_batch {
                let get = |c: &demon_acestep::bench::CaseMap<f64>| {
                    c.get(size)
                        .and_then(|x| x.get(len))
                        .and_then(|x| x.get(batch))
                        .copied()
                };
                println!(
                    "{size:>10} {len:>8} {batch:>6} {ms:>12.1} {:>10.1} {:>8.1}%",
                    get(&m.dit_step_gflop).unwrap_or(f64::NAN),
                    100.0 * get(&m.dit_roofline_share_by_case).unwrap_or(f64::NAN)
                );
            }
        }
    }
    if let Some(c) = &m.dit_roofline_case {
        println!(
            "DiT roofline share ({} {} s batch {}): {:.1}%",
            c.size.key(),
            c.seconds,
            c.batch,
            100.0 * m.dit_roofline_share
        );
    }
    if let (Some(ms), Some(share)) = (m.vae_decode_ms_per_audio_second, m.vae_roofline_share) {
        println!(
            "VAE decode of {} s: {ms:.0} ms per audio second, {:.1}% of the matmul rate",
            m.vae_decode_seconds,
            100.0 * share
        );
    }
    if let Some(identical) = m.rows_identical_across_batches {
        println!(
            "rows byte-identical across batch sizes: {identical} ({} rows compared)",
            m.row_check.rows_compared
        );
    }
    if let Some(l) = &m.lora_change {
        println!(
            "LoRA strength change, rank {} on {} modules: {:.0} ms (one merge; {:.0} ms by the three merges a change took before)",
            l.rank, l.modules, l.change_ms, l.three_merge_ms
        );
    }
    for (phase, mib) in &m.peak_rss_mib {
        println!("peak RSS ({phase}): {mib:.0} MiB");
    }
}
