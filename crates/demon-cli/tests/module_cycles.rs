//! No module imports a module that imports it back (issue 9): the module graph of every crate of
//! the workspace must have no cycle.
//!
//! Edges come from `use` declarations and from paths anywhere in the code, macro arguments
//! included, that start with `crate::`, `super::`, `self::` or the name of a child module. A
//! path's target is the longest prefix of it that names a module. Nodes are a crate's modules,
//! files and inline `mod` blocks alike, so a parent and its child are two nodes (`dit/mod.rs`
//! naming `cpu::…` while `dit/cpu.rs` uses `super::…` is a cycle). The crate root is not a node:
//! it declares every module and is the crate's façade; a path to an item the root re-exports
//! (`pub use x::Item`) is an edge to the module it comes from, a path to the root's own items
//! is no edge.
//!
//! A failure names each cycle with one witness use per edge (`file:line path`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Cycles on `main` when this check landed. The list may only shrink: a cycle not listed here
/// fails, and so does a listed one that is gone (delete its line).
const KNOWN_CYCLES: &[&str] = &[];

type ModPath = Vec<String>;

/// A path as written (segments) and where.
#[derive(Clone, Debug)]
struct Ref {
    segments: Vec<String>,
    file: PathBuf,
    line: usize,
}

#[derive(Default, Debug)]
struct Module {
    children: BTreeSet<String>,
    refs: Vec<Ref>,
}

struct Crate {
    name: String,
    modules: BTreeMap<ModPath, Module>,
    /// Names the root re-exports, and the paths they come from.
    root_exports: BTreeMap<String, Vec<String>>,
}

/// One cycle: its modules in order (the first repeated at the end is implied) and one witness
/// per edge.
#[derive(Debug)]
struct Cycle {
    members: BTreeSet<String>,
    ring: Vec<String>,
    witnesses: Vec<String>,
}

impl Cycle {
    /// The key of the known-cycles list: `crate: a, b, c` (modules sorted).
    fn key(&self, krate: &str) -> String {
        let m: Vec<&str> = self.members.iter().map(String::as_str).collect();
        format!("{krate}: {}", m.join(", "))
    }
}

fn show(path: &[String]) -> String {
    path.join("::")
}

/// Every path in `tree` as segments (a glob stops at its prefix).
fn expand_use(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            expand_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut full = prefix.clone();
            let name = n.ident.to_string();
            if name != "self" {
                full.push(name.clone());
            }
            let alias = if name == "self" {
                prefix.last().cloned().unwrap_or_default()
            } else {
                name
            };
            out.push((full, alias));
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            if r.ident != "self" {
                full.push(r.ident.to_string());
            }
            out.push((full, r.rename.to_string()));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), String::new())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                expand_use(t, prefix, out);
            }
        }
    }
}

/// Collects the paths of one module's own items (not of its child modules).
struct RefCollector<'a> {
    file: &'a Path,
    refs: Vec<Ref>,
    /// `pub use` re-exports: (name, path); filled for every module, used for the root.
    exports: Vec<(String, Vec<String>)>,
}

impl RefCollector<'_> {
    fn push(&mut self, segments: Vec<String>, line: usize) {
        if !segments.is_empty() {
            self.refs.push(Ref {
                segments,
                file: self.file.to_path_buf(),
                line,
            });
        }
    }

    /// `a::b::c` chains inside macro arguments.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => {
                    self.scan_tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(first) => {
                    let line = first.span().start().line;
                    let mut segments = vec![first.to_string()];
                    let mut j = i + 1;
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(id)),
                    ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        segments.push(id.to_string());
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.push(segments, line);
                    }
                    i = j;
                }
                _ => i += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for RefCollector<'_> {
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // Child modules are nodes of their own.
    }
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if u.leading_colon.is_some() {
            return;
        }
        let line = u.use_token.span.start().line;
        let mut paths = Vec::new();
        expand_use(&u.tree, &mut Vec::new(), &mut paths);
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        for (segments, alias) in paths {
            if public && !alias.is_empty() {
                self.exports.push((alias, segments.clone()));
            }
            self.push(segments, line);
        }
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() && p.segments.len() > 1 {
            let line = p.segments[0].ident.span().start().line;
            self.push(
                p.segments.iter().map(|s| s.ident.to_string()).collect(),
                line,
            );
        }
        syn::visit::visit_path(self, p);
    }
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.scan_tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// Reads a crate's modules starting at its root file; `read` gives a file's text (or `None`).
fn load_crate(
    name: &str,
    root: &Path,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Result<Crate, String> {
    let mut krate = Crate {
        name: name.to_string(),
        modules: BTreeMap::new(),
        root_exports: BTreeMap::new(),
    };
    let text = read(root).ok_or_else(|| format!("cannot read {}", root.display()))?;
    let file = syn::parse_file(&text).map_err(|e| format!("{}: {e}", root.display()))?;
    let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
    load_items(&mut krate, Vec::new(), &file.items, root, &dir, read)?;
    Ok(krate)
}

fn load_items(
    krate: &mut Crate,
    path: ModPath,
    items: &[syn::Item],
    file: &Path,
    dir: &Path,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Result<(), String> {
    let mut collector = RefCollector {
        file,
        refs: Vec::new(),
        exports: Vec::new(),
    };
    let mut children = BTreeSet::new();
    for item in items {
        collector.visit_item(item);
        let syn::Item::Mod(m) = item else { continue };
        let child = m.ident.to_string();
        let mut child_path = path.clone();
        child_path.push(child.clone());
        children.insert(child.clone());
        match &m.content {
            Some((_, inner)) => {
                load_items(krate, child_path, inner, file, &dir.join(&child), read)?
            }
            None => {
                let flat = dir.join(format!("{child}.rs"));
                let nested = dir.join(&child).join("mod.rs");
                let (child_file, text) = match read(&flat) {
                    Some(t) => (flat, t),
                    None => match read(&nested) {
                        Some(t) => (nested, t),
                        None => {
                            return Err(format!(
                                "{}: `mod {child}` has neither {} nor {}",
                                file.display(),
                                flat.display(),
                                nested.display()
                            ));
                        }
                    },
                };
                let parsed =
                    syn::parse_file(&text).map_err(|e| format!("{}: {e}", child_file.display()))?;
                load_items(
                    krate,
                    child_path,
                    &parsed.items,
                    &child_file,
                    &dir.join(&child),
                    read,
                )?;
            }
        }
    }
    if path.is_empty() {
        krate.root_exports = collector.exports.into_iter().collect();
    }
    krate.modules.insert(
        path,
        Module {
            children,
            refs: collector.refs,
        },
    );
    Ok(())
}

/// The module a path written in module `from` points into, if any (never `from` itself).
fn resolve(krate: &Crate, from: &ModPath, segments: &[String], depth: usize) -> Option<ModPath> {
    let (mut target, rest): (ModPath, &[String]) = match segments[0].as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (from.clone(), &segments[1..]),
        "super" => {
            let mut base = from.clone();
            let mut k = 0;
            while segments.get(k).is_some_and(|s| s == "super") {
                base.pop()?;
                k += 1;
            }
            (base, &segments[k..])
        }
        first if krate.modules.get(from)?.children.contains(first) => (from.clone(), segments),
        _ => return None,
    };
    let mut used = 0;
    for s in rest {
        let mut next = target.clone();
        next.push(s.clone());
        if !krate.modules.contains_key(&next) {
            break;
        }
        target = next;
        used += 1;
    }
    if target.is_empty() {
        // Into the root: follow its re-exports to the module an item comes from.
        let via = krate.root_exports.get(rest.get(used)?)?;
        if depth > 4 || via.is_empty() {
            return None;
        }
        return resolve(krate, &Vec::new(), via, depth + 1).filter(|t| t != from);
    }
    (target != *from).then_some(target)
}

/// Edges between non-root modules, each with its first witness.
fn edges(krate: &Crate) -> BTreeMap<(ModPath, ModPath), String> {
    let mut out = BTreeMap::new();
    for (from, module) in &krate.modules {
        if from.is_empty() {
            continue;
        }
        for r in &module.refs {
            if let Some(to) = resolve(krate, from, &r.segments, 0) {
                out.entry((from.clone(), to)).or_insert_with(|| {
                    format!("{}:{} {}", r.file.display(), r.line, r.segments.join("::"))
                });
            }
        }
    }
    out
}

/// Shortest path from `a` to `b` over `adj` (both ends included).
fn shortest(
    adj: &BTreeMap<ModPath, Vec<ModPath>>,
    a: &ModPath,
    b: &ModPath,
) -> Option<Vec<ModPath>> {
    let mut prev: BTreeMap<ModPath, ModPath> = BTreeMap::new();
    let mut queue = VecDeque::from([a.clone()]);
    while let Some(n) = queue.pop_front() {
        for m in adj.get(&n).into_iter().flatten() {
            if m == b {
                let mut path = vec![b.clone(), n.clone()];
                let mut cur = n.clone();
                while let Some(p) = prev.get(&cur) {
                    path.push(p.clone());
                    cur = p.clone();
                }
                path.reverse();
                return Some(path);
            }
            if m != a && !prev.contains_key(m) {
                prev.insert(m.clone(), n.clone());
                queue.push_back(m.clone());
            }
        }
    }
    None
}

/// Every set of modules that reach each other (more than one module), with a witness ring.
fn cycles(krate: &Crate) -> Vec<Cycle> {
    let edges = edges(krate);
    let mut adj: BTreeMap<ModPath, Vec<ModPath>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        adj.entry(a.clone()).or_default().push(b.clone());
    }
    let reach = |start: &ModPath| -> BTreeSet<ModPath> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(n) = stack.pop() {
            for m in adj.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<ModPath, BTreeSet<ModPath>> = krate
        .modules
        .keys()
        .map(|m| (m.clone(), reach(m)))
        .collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in krate.modules.keys() {
        if done.contains(m) || !reach[m].contains(m) {
            continue;
        }
        let members: BTreeSet<ModPath> = reach[m]
            .iter()
            .filter(|n| reach[*n].contains(m))
            .cloned()
            .collect();
        done.extend(members.iter().cloned());
        if members.len() < 2 {
            continue;
        }
        let ring = shortest(&adj, m, m).unwrap_or_default();
        let witnesses = ring
            .windows(2)
            .map(|w| edges[&(w[0].clone(), w[1].clone())].clone())
            .collect();
        out.push(Cycle {
            members: members.iter().map(|p| show(p)).collect(),
            ring: ring.iter().map(|p| show(p)).collect(),
            witnesses,
        });
    }
    out
}

/// The crate roots of the workspace: (name, root file).
fn workspace_roots() -> Vec<(String, PathBuf)> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let repo = crates.join("..").canonicalize().expect("the repository");
    let mut roots = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .expect("crates/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        for (root, label) in [
            ("lib.rs", name.clone()),
            ("main.rs", format!("{name} (bin)")),
        ] {
            let file = dir.join("src").join(root);
            if file.exists() {
                let file = file.canonicalize().unwrap();
                roots.push((label, file.strip_prefix(&repo).unwrap().to_path_buf()));
            }
        }
    }
    roots
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |p: &Path| std::fs::read_to_string(repo.join(p)).ok();
    let mut found = Vec::new();
    let mut report = String::new();
    let roots = workspace_roots();
    assert!(roots.len() >= 7, "found the workspace's crates: {roots:?}");
    for (name, root) in roots {
        let krate = load_crate(&name, &root, &read).unwrap_or_else(|e| panic!("{e}"));
        assert!(krate.modules.len() > 1, "{name}: modules were found");
        for c in cycles(&krate) {
            let key = c.key(&krate.name);
            if !KNOWN_CYCLES.contains(&key.as_str()) {
                report += &format!(
                    "\n  {}: {}\n      {}",
                    krate.name,
                    c.ring.join(" -> "),
                    c.witnesses.join("\n      ")
                );
            }
            found.push(key);
        }
    }
    let gone: Vec<&&str> = KNOWN_CYCLES
        .iter()
        .filter(|k| !found.iter().any(|f| f == *k))
        .collect();
    assert!(
        report.is_empty(),
        "module cycles (a module imports one that imports it back):{report}"
    );
    assert!(
        gone.is_empty(),
        "these known cycles are gone or changed: delete them from KNOWN_CYCLES {gone:?} (found: {found:?})"
    );
}

/// The checker on synthetic crates.
mod checker {
    use super::*;

    fn krate(files: &[(&str, &str)]) -> Crate {
        let files: BTreeMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        load_crate("synthetic", Path::new("src/lib.rs"), &|p: &Path| {
            files.get(p).cloned()
        })
        .unwrap()
    }

    fn rings(files: &[(&str, &str)]) -> Vec<String> {
        cycles(&krate(files))
            .iter()
            .map(|c| c.ring.join(" -> "))
            .collect()
    }

    #[test]
    fn a_use_and_a_call_back_are_a_cycle_named_with_its_witnesses() {
        let k = krate(&[
            ("src/lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
            ("src/a.rs", "use crate::b::Thing;\npub fn f() {}\n"),
            ("src/b.rs", "pub struct Thing;\nfn g() { crate::a::f(); }\n"),
            ("src/c.rs", "use crate::a::f;\n"),
        ]);
        let c = cycles(&k);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].ring, ["a", "b", "a"]);
        assert_eq!(c[0].key("synthetic"), "synthetic: a, b");
        assert_eq!(
            c[0].witnesses,
            ["src/a.rs:1 crate::b::Thing", "src/b.rs:2 crate::a::f"]
        );
    }

    #[test]
    fn longer_rings_parents_and_children_macros_and_root_reexports_count() {
        // a -> b -> c -> a through a group import, super and a macro argument.
        assert_eq!(
            rings(&[
                ("src/lib.rs", "mod a; mod b; mod c;"),
                ("src/a.rs", "use crate::{b::{self, X}};"),
                (
                    "src/b.rs",
                    "fn f() { let _ = format!(\"{}\", crate::c::N); }"
                ),
                ("src/c.rs", "fn g() { super::a::h() }"),
            ]),
            ["a -> b -> c -> a"]
        );
        // A parent naming its child while the child uses the parent (files and inline).
        assert_eq!(
            rings(&[
                ("src/lib.rs", "pub mod dit;"),
                (
                    "src/dit/mod.rs",
                    "mod cpu;\npub use cpu::forward;\npub struct Dit;"
                ),
                (
                    "src/dit/cpu.rs",
                    "use super::Dit;\npub fn forward(_: &Dit) {}"
                ),
            ]),
            ["dit -> dit::cpu -> dit"]
        );
        assert_eq!(
            rings(&[
                ("src/lib.rs", "pub mod sink;"),
                (
                    "src/sink.rs",
                    "pub trait S {}\npub use device::D;\nmod device { use super::S; pub struct D; }"
                ),
            ]),
            ["sink -> sink::device -> sink"]
        );
        // Through a name the root re-exports.
        assert_eq!(
            rings(&[
                ("src/lib.rs", "mod a; mod b;\npub use b::Thing;"),
                ("src/a.rs", "use crate::Thing;\npub fn f() {}"),
                (
                    "src/b.rs",
                    "pub struct Thing;\nimpl Thing { fn g() { crate::a::f() } }"
                ),
            ]),
            ["a -> b -> a"]
        );
    }

    #[test]
    fn one_way_imports_are_no_cycle() {
        assert!(
            rings(&[
                (
                    "src/lib.rs",
                    "pub mod a; pub mod b; pub mod gemm;\npub struct App;\nfn run() { a::f(); b::g(); }"
                ),
                // The root's own items, an extern crate named like a sibling, comments and strings.
                (
                    "src/a.rs",
                    "use crate::App;\nuse crate::b::g;\n// crate::b uses crate::a\npub fn f() { gemm::run(); let _ = \"crate::b::x\"; }"
                ),
                (
                    "src/b.rs",
                    "use crate::gemm::K;\npub fn g() {}\n#[cfg(test)]\nmod tests { use super::*; }"
                ),
                ("src/gemm.rs", "pub struct K;"),
            ])
            .is_empty()
        );
    }

    #[test]
    fn a_missing_module_file_is_an_error_that_names_it() {
        let files = [("src/lib.rs", "mod gone;")];
        let e = load_crate("x", Path::new("src/lib.rs"), &|p: &Path| {
            files
                .iter()
                .find(|(f, _)| Path::new(f) == p)
                .map(|(_, t)| t.to_string())
        })
        .err()
        .unwrap();
        assert!(e.contains("mod gone") && e.contains("src/gone.rs"), "{e}");
    }
}
