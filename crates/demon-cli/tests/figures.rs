//! Every published figure equals the value in its saved benchmark report, so a stale figure fails.
//!
//! A figure in README.md, docs/*.md or crates/*/README.md is tied to its report by an HTML comment
//! right after it (invisible when rendered):
//!
//! ```text
//! 34.6<!-- bench docs/bench/sketch.json#/render_realtime_ratio -->x real time
//! 12.1 s<!-- bench docs/bench/acestep-model-60s.json#/dit_step_ms/turbo-2b/60/1 *0.001 -->
//! 1 tick<!-- bench docs/bench/sketch.json#/shared_lane_onset_ticks/1 docs/bench/sketch.json#/shared_lane_onset_ticks/8 -->
//! ```
//!
//! The figure is the last number between the previous annotation (or the line start) and the
//! comment; each `FILE#POINTER` (a JSON pointer into a report saved from `demon bench --json`,
//! paths from the repository root), times the optional `*SCALE`, rounded to the figure's
//! decimals, must print as the figure. In README.md's "Measured figures" table every number of
//! the Figure column must carry an annotation. `DEMON_UPDATE_FIGURES=1 cargo test -p demon-cli
//! --test figures` rewrites the figures from the reports instead (after
//! `scripts/bench-reports.sh`); see docs/performance.md.

use std::path::{Path, PathBuf};

use serde_json::Value;

const OPEN: &str = "<!-- bench ";
const CLOSE: &str = "-->";

/// One annotated figure.
#[derive(Debug, PartialEq)]
struct Figure {
    line: usize,
    /// Byte range of the figure's number in the document.
    span: (usize, usize),
    text: String,
    sources: Vec<(String, String)>,
    scale: f64,
}

/// The last number in `s` (digits with at most one decimal point, after an optional minus), as
/// a byte range of `s`.
fn last_number(s: &str) -> Option<(usize, usize)> {
    let b = s.as_bytes();
    let mut end = b.len();
    while end > 0 && !b[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 && b[start - 1].is_ascii_digit() {
        start -= 1;
    }
    if start >= 2 && b[start - 1] == b'.' && b[start - 2].is_ascii_digit() {
        start -= 1;
        while start > 0 && b[start - 1].is_ascii_digit() {
            start -= 1;
        }
    }
    if start > 0 && b[start - 1] == b'-' {
        start -= 1;
    }
    Some((start, end))
}

/// How many numbers `s` holds.
fn count_numbers(mut s: &str) -> usize {
    let mut n = 0;
    while let Some((start, _)) = last_number(s) {
        n += 1;
        s = &s[..start];
    }
    n
}

/// The annotated figures of a document, or a message naming the malformed annotation.
fn figures(doc: &str) -> Result<Vec<Figure>, String> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut fenced = false;
    for (i, line) in doc.split_inclusive('\n').enumerate() {
        // Examples in fenced code blocks are not figures.
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            offset += line.len();
            continue;
        }
        let mut from = 0;
        while let Some(k) = line[from..].find(OPEN) {
            let at = from + k;
            let where_ = format!("line {}", i + 1);
            let body_start = at + OPEN.len();
            let close = line[body_start..]
                .find(CLOSE)
                .ok_or_else(|| format!("{where_}: `{OPEN}` without `{CLOSE}`"))?;
            let body = &line[body_start..body_start + close];
            let (start, end) = last_number(&line[from..at])
                .ok_or_else(|| format!("{where_}: no figure before the annotation `{body}`"))?;
            let mut sources = Vec::new();
            let mut scale = 1.0;
            for word in body.split_whitespace() {
                if let Some(s) = word.strip_prefix('*') {
                    scale = s
                        .parse()
                        .map_err(|_| format!("{where_}: scale `{word}` is not a number"))?;
                } else {
                    let (file, pointer) = word
                        .split_once('#')
                        .ok_or_else(|| format!("{where_}: `{word}` is not FILE#/JSON/POINTER"))?;
                    sources.push((file.to_string(), pointer.to_string()));
                }
            }
            if sources.is_empty() {
                return Err(format!("{where_}: annotation `{body}` names no report"));
            }
            out.push(Figure {
                line: i + 1,
                span: (offset + from + start, offset + from + end),
                text: line[from + start..from + end].to_string(),
                sources,
                scale,
            });
            from = body_start + close + CLOSE.len();
        }
        offset += line.len();
    }
    Ok(out)
}

/// The figure as it must read: `value` rounded to as many decimals as `shown` has.
fn rendered(value: f64, shown: &str) -> String {
    let decimals = shown.split_once('.').map_or(0, |(_, d)| d.len());
    let s = format!("{value:.decimals$}");
    // "-0.0" reads as "0.0".
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// Mismatches of `doc`'s figures against the reports (read by `report`), one message each, and
/// the document with every figure rewritten from its first source.
fn check(
    name: &str,
    doc: &str,
    report: &dyn Fn(&str) -> Result<Value, String>,
) -> (Vec<String>, String) {
    let mut errors = Vec::new();
    let figs = match figures(doc) {
        Ok(f) => f,
        Err(e) => return (vec![format!("{name}: {e}")], doc.to_string()),
    };
    let mut updated = doc.to_string();
    for f in figs.iter().rev() {
        let mut first = None;
        for (file, pointer) in &f.sources {
            let value = report(file).and_then(|v| {
                v.pointer(pointer)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("{file} has no number at `{pointer}`"))
            });
            match value {
                Ok(v) => {
                    let want = rendered(v * f.scale, &f.text);
                    if want != f.text {
                        errors.push(format!(
                            "{name}:{}: the figure {} should be {want} ({file}#{pointer} = {v}{})",
                            f.line,
                            f.text,
                            if f.scale == 1.0 {
                                String::new()
                            } else {
                                format!(", times {}", f.scale)
                            }
                        ));
                    }
                    first.get_or_insert(want);
                }
                Err(e) => errors.push(format!("{name}:{}: {e}", f.line)),
            }
        }
        if let Some(want) = first {
            updated.replace_range(f.span.0..f.span.1, &want);
        }
    }
    errors.reverse();
    (errors, updated)
}

/// Whether every number of a table cell carries a report annotation (each annotation follows
/// exactly one number, and none comes after the last).
fn cell_fully_annotated(cell: &str) -> bool {
    let parts: Vec<&str> = cell.split(OPEN).collect();
    let (tail, heads) = parts.split_last().expect("split gives one part at least");
    let after_close = |p: &str| {
        p.split_once(CLOSE)
            .map_or(p.to_string(), |t| t.1.to_string())
    };
    let heads_ok = heads.iter().enumerate().all(|(i, h)| {
        let h = if i == 0 {
            h.to_string()
        } else {
            after_close(h)
        };
        count_numbers(&h) == 1
    });
    heads_ok && count_numbers(&after_close(tail)) == 0
}

/// Rows of the Figure column of the "Measured figures" table whose numbers are not all
/// annotated.
fn unannotated_table_figures(readme: &str) -> Vec<String> {
    let Some(at) = readme.find("## Measured figures") else {
        return vec!["README.md has no \"## Measured figures\" section".into()];
    };
    let mut out = Vec::new();
    let section = &readme[at..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    for row in section[..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = row.split('|').collect();
        let Some(cell) = cells.get(2) else { continue };
        if !cell_fully_annotated(cell) {
            out.push(format!(
                "README.md: `{}`: every number in the Figure column needs a report annotation",
                cell.trim()
            ));
        }
    }
    out
}

/// Table cells of any document that annotate some of their numbers but not all (a figure
/// added next to an annotated one, as in `2.87<!-- … --> / 5.79 s`).
fn partly_annotated_cells(name: &str, doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in doc.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('|') {
            continue;
        }
        for cell in line.split('|') {
            if cell.contains(OPEN) && !cell_fully_annotated(cell) {
                out.push(format!(
                    "{name}:{}: `{}`: a cell with an annotated figure needs one for each of its numbers",
                    i + 1,
                    cell.trim()
                ));
            }
        }
    }
    out
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The documents that may publish figures.
fn documents() -> Vec<PathBuf> {
    let root = repo();
    let mut docs = vec![root.join("README.md")];
    for dir in [root.join("docs"), root.join("crates")] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .flat_map(|p| {
                if p.is_dir() {
                    vec![p.join("README.md")]
                } else {
                    vec![p]
                }
            })
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "md"))
            .collect();
        found.sort();
        docs.extend(found);
    }
    docs
}

#[test]
fn published_figures_equal_their_saved_reports() {
    let root = repo();
    let report = |file: &str| -> Result<Value, String> {
        let text = std::fs::read_to_string(root.join(file))
            .map_err(|e| format!("cannot read the report {file}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{file} is not JSON: {e}"))
    };
    let update = std::env::var_os("DEMON_UPDATE_FIGURES").is_some();
    let mut errors = Vec::new();
    let mut checked = 0;
    for path in documents() {
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        let doc = std::fs::read_to_string(&path).unwrap();
        checked += figures(&doc).map_or(0, |f| f.len());
        let (errs, updated) = check(&name, &doc, &report);
        if update && updated != doc {
            std::fs::write(&path, updated).unwrap();
            eprintln!("rewrote {} figures in {name}", errs.len());
        } else {
            errors.extend(errs);
        }
        errors.extend(partly_annotated_cells(&name, &doc));
        if name == "README.md" {
            errors.extend(unannotated_table_figures(&doc));
        }
    }
    assert!(checked >= 9, "only {checked} annotated figures were found");
    assert!(
        errors.is_empty(),
        "stale or unsourced figures (DEMON_UPDATE_FIGURES=1 rewrites them from the reports):\n  {}",
        errors.join("\n  ")
    );
}

/// The checker on synthetic documents and reports.
mod checker {
    use super::*;

    fn reports(file: &str) -> Result<Value, String> {
        match file {
            "r.json" => Ok(serde_json::json!({
                "ratio": 34.61, "ms": {"60": {"1": 12120.9}}, "share": 0.9073, "onset": {"1": 1, "8": 1},
                "tiny": 3.04e-5, "text": "x"
            })),
            _ => Err(format!("cannot read the report {file}")),
        }
    }

    fn errors(doc: &str) -> Vec<String> {
        check("doc.md", doc, &reports).0
    }

    #[test]
    fn figures_match_after_scaling_and_rounding_to_their_decimals() {
        let doc = "| a | 34.6<!-- bench r.json#/ratio -->x | b |\n\
                   12.1 s<!-- bench r.json#/ms/60/1 *0.001 -->, 90.7 %<!-- bench r.json#/share *100 --> of it\n\
                   1 tick<!-- bench r.json#/onset/1 r.json#/onset/8 --> and 0.0030 %<!-- bench r.json#/tiny *100 -->\n";
        assert_eq!(errors(doc), Vec::<String>::new());
        let f = figures(doc).unwrap();
        assert_eq!(
            f.iter().map(|f| f.text.as_str()).collect::<Vec<_>>(),
            ["34.6", "12.1", "90.7", "1", "0.0030"]
        );
        assert_eq!(f[1].line, 2);
    }

    #[test]
    fn an_edited_figure_fails_and_names_the_right_value() {
        let e = errors("x 34.7<!-- bench r.json#/ratio -->x\n");
        assert_eq!(
            e,
            ["doc.md:1: the figure 34.7 should be 34.6 (r.json#/ratio = 34.61)"]
        );
        assert_eq!(errors("x 34<!-- bench r.json#/ratio -->x").len(), 1);
        assert_eq!(errors("x 34.61<!-- bench r.json#/ratio -->x").len(), 0);
        assert_eq!(
            errors("2 ticks<!-- bench r.json#/onset/1 r.json#/onset/8 -->").len(),
            2
        );
    }

    #[test]
    fn examples_in_code_blocks_are_skipped() {
        assert_eq!(
            figures("```text\n9<!-- bench r.json#/x -->\n```\n").unwrap(),
            []
        );
    }

    #[test]
    fn bad_annotations_are_errors() {
        assert!(
            errors("34.6<!-- bench r.json#/nothing -->")[0].contains("no number at `/nothing`")
        );
        assert!(errors("34.6<!-- bench r.json#/text -->")[0].contains("no number"));
        assert!(errors("34.6<!-- bench gone.json#/ratio -->")[0].contains("cannot read"));
        assert!(errors("no figure <!-- bench r.json#/ratio -->")[0].contains("no figure"));
        assert!(errors("3<!-- bench r.json -->")[0].contains("FILE#/JSON/POINTER"));
        assert!(errors("3<!-- bench r.json#/ratio")[0].contains("without"));
    }

    #[test]
    fn update_rewrites_each_figure_from_its_report() {
        let (_, updated) = check(
            "doc.md",
            "a 30.0<!-- bench r.json#/ratio -->x, 13 s<!-- bench r.json#/ms/60/1 *0.001 --> z\n",
            &reports,
        );
        assert_eq!(
            updated,
            "a 34.6<!-- bench r.json#/ratio -->x, 12 s<!-- bench r.json#/ms/60/1 *0.001 --> z\n"
        );
    }

    #[test]
    fn every_number_of_the_readme_table_needs_an_annotation() {
        let table = |figure: &str| {
            format!(
                "## Measured figures\n\n| What | Figure | Command |\n|---|---|---|\n| x at depth 4 | {figure} | `demon bench` |\n\n## Next\n| a | 9 | b |\n"
            )
        };
        assert!(unannotated_table_figures(&table("34.6<!-- bench r.json#/ratio -->x")).is_empty());
        assert!(
            unannotated_table_figures(&table(
                "12.2<!-- bench r.json#/a --> ticks = 4.2<!-- bench r.json#/b --> wait + S"
            ))
            .is_empty()
        );
        assert_eq!(unannotated_table_figures(&table("34.6x")).len(), 1);
        assert_eq!(
            unannotated_table_figures(&table("12.2<!-- bench r.json#/a --> ticks = 4.2 wait"))
                .len(),
            1
        );
    }

    #[test]
    fn a_table_cell_with_one_annotation_needs_them_all() {
        let doc = "| a | 2.87<!-- bench r.json#/a --> / 5.79<!-- bench r.json#/b --> s | 59 % |\n";
        assert!(partly_annotated_cells("doc.md", doc).is_empty());
        let doc = "| a | 2.87<!-- bench r.json#/a --> / 5.79 s | 59 % |\n";
        assert_eq!(
            partly_annotated_cells("doc.md", doc),
            [
                "doc.md:1: `2.87<!-- bench r.json#/a --> / 5.79 s`: a cell with an annotated figure needs one for each of its numbers"
            ]
        );
        // Outside tables and in code blocks the rule does not apply.
        assert!(
            partly_annotated_cells("doc.md", "2.87<!-- bench r.json#/a --> / 5.79 s\n").is_empty()
        );
        assert!(
            partly_annotated_cells("doc.md", "```\n| 1<!-- bench r.json#/a --> 2 |\n```\n")
                .is_empty()
        );
    }
}
