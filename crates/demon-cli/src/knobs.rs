//! `demon knobs`: the knob catalog (`demon_live::controls::KNOBS`) as a table or JSON, the same
//! list `GET /api/knobs` and the MCP `list_knobs` tool give a running server.

use anyhow::Result;
use clap::Args;
use demon_live::control::PropagationClass;
use demon_live::controls::{KNOBS, LORA_PREFIX, LORA_RANGE};

#[derive(Args, Debug)]
pub struct KnobsArgs {
    /// Print the catalog as JSON (name, min, max, default, unit, class, integer, slewed, help).
    #[arg(long)]
    pub json: bool,
}

/// The class's name on the wire (`shared_per_step`, ...).
fn class_name(c: PropagationClass) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// A number as a person types it (`4294967295`, `0.7`, `-0.75`).
fn num(v: f64) -> String {
    format!("{v}")
}

/// The catalog as text: one line per knob, then the LoRA strengths.
pub fn table() -> String {
    let rows: Vec<[String; 6]> = KNOBS
        .iter()
        .map(|k| {
            [
                k.name.to_string(),
                format!("{} .. {}", num(k.min), num(k.max)),
                num(k.default),
                k.unit.to_string(),
                class_name(k.class),
                k.help.to_string(),
            ]
        })
        .chain(std::iter::once([
            format!("{LORA_PREFIX}<id>"),
            format!("{} .. {}", num(LORA_RANGE.0), num(LORA_RANGE.1)),
            "0".into(),
            "×".into(),
            class_name(PropagationClass::GlobalWeights),
            "Strength of a loaded LoRA adapter (0 = off), one knob per adapter.".into(),
        ]))
        .collect();
    let header = ["name", "range", "default", "unit", "class", "what it does"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..5).map(width).collect();
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i < 5 {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            } else {
                s.push_str(c);
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(&header)];
    out.extend(
        rows.iter()
            .map(|r| line(&r.iter().map(String::as_str).collect::<Vec<_>>())),
    );
    out.join("\n") + "\n"
}

pub fn run(args: KnobsArgs) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(KNOBS)?);
    } else {
        print!("{}", table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_line_per_knob_with_its_range_default_unit_and_class() {
        let t = table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 1 + KNOBS.len() + 1, "{t}");
        assert!(lines[0].starts_with("name") && lines[0].contains("unit"));
        let guidance = lines
            .iter()
            .find(|l| l.starts_with("guidance "))
            .expect("guidance");
        let cells: Vec<&str> = guidance
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            &cells[..5],
            &["guidance", "1 .. 10", "1", "scale", "shared_per_step"],
            "{guidance}"
        );
        let seed = lines.iter().find(|l| l.starts_with("seed ")).unwrap();
        assert!(
            seed.contains("0 .. 4294967295") && seed.contains("per_slot"),
            "{seed}"
        );
        assert!(lines.last().unwrap().starts_with("lora:<id>"));
    }
}
