//! `demon bench`: the engine's figures, measured on this machine.

use anyhow::{Result, bail};
use clap::Args;
use demon_engine::Prompt;
use demon_live::bench::{BenchConfig, run as run_bench};

use crate::backends::{self, BackendArgs};

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
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Ticks measured per depth (rounded up to whole schedules).
    #[arg(long, default_value_t = 32)]
    pub ticks: usize,
    #[arg(long, default_value = "house")]
    pub prompt: String,
    /// Also draw tick time and generations per second against depth to this PNG.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Measurements to run (comma separated): render, ticks, propagation, decode.
    #[arg(long, value_delimiter = ',', default_value = "render,ticks,propagation,decode")]
    pub only: Vec<String>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !(args.seconds.is_finite() && args.seconds >= 8.0 && args.seconds <= 600.0) {
        bail!("--seconds must be in 8..=600, got {}", args.seconds);
    }
    if args.depths.is_empty() || args.depths.iter().any(|d| *d == 0 || *d > demon_engine::MAX_DEPTH) {
        bail!("--depths must list depths in 1..={}", demon_engine::MAX_DEPTH);
    }
    let mut backend = backends::build(&args.backend)?;
    let cfg = BenchConfig {
        seconds: args.seconds,
        steps: args.steps,
        depths: args.depths.clone(),
        measure_ticks: args.ticks,
        prompt: Prompt::tags(args.prompt.clone()),
        sections: args.only.clone(),
        ..Default::default()
    };
    let quiet = args.json;
    let report = run_bench(&mut backend, &cfg, &mut |m| {
        if !quiet {
            eprintln!("… {m}");
        }
    })?;
    if let Some(p) = &args.plot {
        let pts = |m: &std::collections::BTreeMap<String, f64>| -> Vec<(f64, f64)> {
            let mut v: Vec<(f64, f64)> = m.iter().filter_map(|(k, x)| k.parse::<f64>().ok().map(|d| (d, *x))).collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        };
        let caption = format!("{} BACKEND, {:.0} S SONGS, {} STEPS", report.backend.to_uppercase(), report.song_seconds, report.steps);
        crate::plot::write_depth_plot(p, &pts(&report.tick_ms), &pts(&report.gen_per_s), &caption)?;
        if !args.json {
            eprintln!("wrote the plot to {}", p.display());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("backend {}, {:.0} s songs, {} steps", report.backend, report.song_seconds, report.steps);
    if let Some(r) = report.render_realtime_ratio {
        println!("offline render: {} takes at depth {}: {r:.1}x real time", report.render_takes, report.render_depth);
    }
    println!("{:>6} {:>10} {:>10} {:>10} {:>10}", "depth", "tick ms", "model ms", "gen/s", "overhead");
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
        println!(
            "{class:>20}: onset {} ticks ({} ms), convergence {} ticks ({} ms)",
            p.onset_ticks.map_or("-".into(), |v| v.to_string()),
            p.onset_ms.map_or("-".into(), |v| format!("{v:.0}")),
            p.convergence_ticks.map_or("-".into(), |v| v.to_string()),
            p.convergence_ms.map_or("-".into(), |v| format!("{v:.0}"))
        );
    }
    if let (Some(f), Some(ms)) = (report.receptive_field_frames, report.full_decode_ms) {
        println!("receptive field: {} frames before, {} after; full decode {ms:.1} ms", f.before, f.after);
    }
    for (k, ms) in &report.windowed_decode_ms {
        println!("keep {k} s: windowed decode {ms:.2} ms, speedup {:.1}x", report.windowed_decode_speedup[k]);
    }
    Ok(())
}
