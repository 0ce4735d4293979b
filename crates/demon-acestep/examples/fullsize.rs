//! Full-size cost of ACE-Step 1.5 on this machine through [`demon_acestep::bench::model_bench`]:
//! the f32 matmul rate, DiT steps (2B turbo / XL turbo, song lengths, batches), a VAE decode,
//! roofline shares, the per-row byte check and the peak resident memory of each phase. Random weights unless `--weights DIR`.
//!
//! ```sh
//! cargo run --release -p demon-acestep --example fullsize                  # CPU-feasible default
//! cargo run --release -p demon-acestep --example fullsize -- --sizes turbo-2b --seconds 60 \
//!     --batches 1 --vae-seconds 10 --repeats 3 --json
//! cargo run --release -p demon-acestep --example fullsize -- --full        # every case (GPU)
//! ```
//! Options: `--sizes a,b`, `--seconds 10,60,240`, `--batches 1,2,4,8` (their product replaces
//! the default cases), `--vae-seconds S` (0 skips), `--repeats N`, `--enc-len L`, `--weights DIR`,
//! `--device cpu|cuda[:N]`, `--matmul f32|bf16|f16` (GPU products), `--json`.

use demon_acestep::bench::{
    ModelBenchConfig, ModelSize, model_bench, parse_device, parse_matmul_dtype,
};

fn list<T: std::str::FromStr>(v: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|_| format!("bad list value `{s}`"))
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = ModelBenchConfig::default();
    let (mut sizes, mut seconds, mut batches) = (None, None, None);
    let mut json = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let mut val = || -> Result<String, String> {
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a {
            "--full" => {
                cfg = ModelBenchConfig {
                    ..ModelBenchConfig::full()
                }
            }
            "--sizes" => sizes = Some(list::<String>(&val()?)?),
            "--seconds" => seconds = Some(list::<u32>(&val()?)?),
            "--batches" => batches = Some(list::<usize>(&val()?)?),
            "--vae-seconds" => cfg.vae_seconds = val()?.parse()?,
            "--repeats" => cfg.repeats = val()?.parse()?,
            "--enc-len" => cfg.enc_len = val()?.parse()?,
            "--weights" => cfg.weights = Some(val()?.into()),
            "--device" => cfg.device = parse_device(&val()?)?,
            "--matmul" => cfg.matmul_dtype = parse_matmul_dtype(&val()?)?,
            "--json" => json = true,
            other => {
                return Err(format!("unknown option `{other}` (see the example's docs)").into());
            }
        }
        i += 1;
    }
    if sizes.is_some() || seconds.is_some() || batches.is_some() {
        let sizes: Vec<ModelSize> = sizes
            .unwrap_or_else(|| vec!["turbo-2b".into()])
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        let base = ModelBenchConfig::with_cases(
            &sizes,
            &seconds.unwrap_or_else(|| vec![10]),
            &batches.unwrap_or_else(|| vec![1]),
        );
        cfg.dit_cases = base.dit_cases;
    }
    let report = model_bench(&cfg, &mut |m| eprintln!("{m}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "matmul {:.1} GFLOP/s; DiT share {:.0}% ({:?}); VAE share {}; rows identical across batches: {}",
            report.matmul_gflops,
            100.0 * report.dit_roofline_share,
            report.dit_roofline_case,
            report
                .vae_roofline_share
                .map_or("-".into(), |s| format!("{:.0}%", 100.0 * s)),
            report
                .rows_identical_across_batches
                .map_or("not compared".into(), |b| b.to_string())
        );
        for (phase, mib) in &report.peak_rss_mib {
            println!("peak RSS ({phase}): {mib:.0} MiB");
        }
    }
    Ok(())
}
