//! No module of demon-server imports a module that imports it back (issue 9: the old api.rs ↔
//! mcp.rs ↔ ws.rs cycle). The check reads the sources: every `crate::NAME` path (in `use`
//! lines, grouped `use crate::{a, b}` imports and inline paths) is an edge to module `NAME`, or
//! to the crate root when `NAME` is an item of lib.rs; lib.rs's own edges are the `NAME::` paths
//! it uses. A cycle in that graph fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

const ROOT: &str = "lib";

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segments after `crate::`, including each name of a `crate::{...}` group.
fn crate_refs(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: after `{` or a `,` at depth 0.
            let mut depth = 0;
            let mut expect_name = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expect_name = true,
                    c if expect_name && (c.is_ascii_alphabetic() || c == '_') => {
                        out.insert(ident_at(&group[i..]).to_string());
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.insert(name.to_string());
            }
        }
    }
    out
}

fn module_graph(src: &Path) -> Graph {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            files.insert(stem, std::fs::read_to_string(&path).unwrap());
        }
    }
    let modules: BTreeSet<String> = files.keys().filter(|k| *k != ROOT).cloned().collect();
    let mut graph = Graph::new();
    for (name, source) in &files {
        let edges = graph.entry(name.clone()).or_default();
        if name == ROOT {
            for m in &modules {
                if source.contains(&format!("{m}::")) {
                    edges.insert(m.clone());
                }
            }
            continue;
        }
        for r in crate_refs(source) {
            if modules.contains(&r) {
                if &r != name {
                    edges.insert(r);
                }
            } else {
                edges.insert(ROOT.to_string());
            }
        }
    }
    graph
}

/// A cycle of the graph, if there is one (as the path that closes it).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() >= 10, "modules found: {graph:?}");
    // The surfaces reach the session only through the service.
    for surface in ["ws", "rest", "mcp", "osc", "midi"] {
        assert!(
            graph[surface].contains("service"),
            "{surface} calls the service: {:?}",
            graph[surface]
        );
    }
    assert!(
        !graph["service"]
            .iter()
            .any(|m| ["ws", "rest", "mcp", "osc", "midi", "auth", "ui"].contains(&m.as_str())),
        "the service knows no surface: {:?}",
        graph["service"]
    );
    if let Some(c) = find_cycle(&graph) {
        panic!("module cycle: {}", c.join(" → "));
    }
}

#[test]
fn the_check_sees_cycles_and_grouped_imports() {
    assert_eq!(
        crate_refs("use crate::{a, b::{c, d}, e as f};\nlet x = crate::g::h();"),
        ["a", "b", "e", "g"].iter().map(|s| s.to_string()).collect()
    );
    let mut g = Graph::new();
    g.entry("api".into()).or_default().insert("mcp".into());
    g.entry("mcp".into()).or_default().insert("ws".into());
    g.entry("ws".into()).or_default().insert("api".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["api".into(), "mcp".into(), "ws".into(), "api".into()])
    );
    g.get_mut("ws").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}
