//! The LoRA library: folders of adapter files, scanned at start and on a rescan, each adapter
//! registered at no cost (its header and sidecar read, its tensors not), loaded beside the
//! ticks on first use, then switched like any adapter (DEMON's LoRA folders and their
//! background materialisation; issue 12, item 2).
//!
//! Two halves: [`LoraLibrary`] scans (filesystem work, done on the caller's thread, never the
//! runner's) and [`LibraryIndex`] is what the session knows (ids, metadata, load status), merged
//! from scans at tick boundaries and shown in the state. Loading itself is the runner's
//! (`session`), which records each install as an `install_lora` control so a replay loads the
//! same file at the same tick.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use demon_engine::{AdapterFiles, AdapterMetadata};
use serde::{Deserialize, Serialize};

/// The most adapters one scan registers (a folder of thousands is a mistake, not a library).
pub const MAX_LIBRARY_ADAPTERS: usize = 1000;

/// Where a library adapter stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LibraryStatus {
    /// Found and described; its tensors are not read yet.
    Registered,
    /// Being read beside the ticks (the control that needs it waits).
    Loading,
    /// In the model (disabled until a strength enables it).
    Loaded,
    /// Its files cannot be used; `error` says why. A rescan tries again.
    Failed { error: String },
}

/// One adapter of the library.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibraryEntry {
    /// How controls address it (`set_lora`, the knob `lora:<id>`): the file or folder stem.
    pub id: String,
    pub path: PathBuf,
    /// The group a front end shows it in (`metadata.group`, else the folder it is in).
    pub group: String,
    #[serde(default, skip_serializing_if = "AdapterMetadata::is_empty")]
    pub metadata: AdapterMetadata,
    #[serde(flatten)]
    pub status: LibraryStatus,
}

/// What one scan found: each adapter's path, group and metadata (or why it cannot be read),
/// and what was wrong with the folders themselves.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub found: Vec<(PathBuf, String, Result<AdapterMetadata, String>)>,
    pub problems: Vec<String>,
}

/// The folders of a library and how the backend reads their files. Cheap to clone; scans run on
/// whichever thread asks.
#[derive(Clone)]
pub struct LoraLibrary {
    dirs: Vec<PathBuf>,
    files: Arc<dyn AdapterFiles>,
}

impl std::fmt::Debug for LoraLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraLibrary")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

/// Whether `path` is a PEFT adapter folder (its config or its weights inside).
fn is_peft_folder(path: &Path) -> bool {
    path.join("adapter_config.json").is_file() || path.join("adapter_model.safetensors").is_file()
}

impl LoraLibrary {
    pub fn new(dirs: Vec<PathBuf>, files: Arc<dyn AdapterFiles>) -> Self {
        Self { dirs, files }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    pub fn files(&self) -> &Arc<dyn AdapterFiles> {
        &self.files
    }

    /// Every adapter in the folders: `*.safetensors` files and PEFT folders, directly in a
    /// folder or one level down (a group folder), in name order. A folder that cannot be read
    /// is a problem of the scan, not an error: the others are still scanned.
    pub fn scan(&self) -> Scan {
        let mut scan = Scan::default();
        let mut candidates: Vec<(PathBuf, String)> = Vec::new();
        for dir in &self.dirs {
            let top = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("loras")
                .to_string();
            let mut walk = vec![(dir.clone(), top, 0)];
            while let Some((d, group, depth)) = walk.pop() {
                let listing = match std::fs::read_dir(&d) {
                    Ok(l) => l,
                    Err(e) => {
                        scan.problems.push(format!(
                            "cannot read the LoRA folder `{}`: {e}",
                            d.display()
                        ));
                        continue;
                    }
                };
                let mut names: Vec<PathBuf> = listing.flatten().map(|e| e.path()).collect();
                names.sort();
                for p in names {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.starts_with('.') {
                        continue;
                    }
                    if p.is_dir() {
                        if is_peft_folder(&p) {
                            candidates.push((p, group.clone()));
                        } else if depth == 0 {
                            walk.push((p.clone(), name.to_string(), depth + 1));
                        }
                    } else if p.extension().is_some_and(|e| e == "safetensors") {
                        candidates.push((p, group.clone()));
                    }
                }
            }
        }
        if candidates.len() > MAX_LIBRARY_ADAPTERS {
            scan.problems.push(format!(
                "{} adapters found; only the first {MAX_LIBRARY_ADAPTERS} are registered",
                candidates.len()
            ));
            candidates.truncate(MAX_LIBRARY_ADAPTERS);
        }
        for (path, group) in candidates {
            let described = self.files.describe(&path).map_err(|e| e.to_string());
            scan.found.push((path, group, described));
        }
        scan
    }
}

/// An id usable as a knob name and an OSC address part: the stem with anything but ASCII
/// letters, digits, `_`, `-` and `.` made `_`.
fn id_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("lora")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    if stem.is_empty() { "lora".into() } else { stem }
}

/// What merging a scan changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RescanReport {
    /// Ids registered by this scan.
    pub added: Vec<String>,
    /// Ids whose files are gone (adapters already loaded stay, in memory).
    pub removed: Vec<String>,
    /// Files or folders that could not be read or described.
    pub problems: Vec<String>,
    /// Adapters in the library now.
    pub total: usize,
}

/// The library as a session knows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LibraryIndex {
    entries: Vec<LibraryEntry>,
}

impl LibraryIndex {
    pub fn entries(&self) -> &[LibraryEntry] {
        &self.entries
    }

    pub fn get(&self, id: &str) -> Option<&LibraryEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    pub fn set_status(&mut self, id: &str, status: LibraryStatus) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            e.status = status;
        }
    }

    /// Take in a scan. An adapter keeps its id across scans (by path); a new one gets its stem,
    /// with `-2`, `-3`… when that is taken by another entry or by one of `taken` (adapters the
    /// model had before the library). Loaded adapters stay whatever the scan says; a failed
    /// one is tried again.
    pub fn merge(&mut self, scan: Scan, taken: &[String]) -> RescanReport {
        let mut report = RescanReport {
            problems: scan.problems,
            ..Default::default()
        };
        let mut next: Vec<LibraryEntry> = Vec::with_capacity(scan.found.len());
        for (path, group, described) in scan.found {
            let old = self.entries.iter().position(|e| e.path == path);
            let status = match (&described, old.map(|i| &self.entries[i].status)) {
                (_, Some(s @ (LibraryStatus::Loaded | LibraryStatus::Loading))) => s.clone(),
                (Ok(_), _) => LibraryStatus::Registered,
                (Err(e), _) => {
                    report.problems.push(e.clone());
                    LibraryStatus::Failed { error: e.clone() }
                }
            };
            let metadata = described.unwrap_or_default();
            let id = match old {
                Some(i) => self.entries[i].id.clone(),
                None => {
                    let stem = id_of(&path);
                    let used = |c: &str| {
                        taken.iter().any(|t| t == c)
                            || next.iter().any(|e| e.id == c)
                            || self.entries.iter().any(|e| e.id == c)
                    };
                    let mut id = stem.clone();
                    let mut n = 2;
                    while used(&id) {
                        id = format!("{stem}-{n}");
                        n += 1;
                    }
                    report.added.push(id.clone());
                    id
                }
            };
            let group = metadata.group.clone().unwrap_or(group);
            next.push(LibraryEntry {
                id,
                path,
                group,
                metadata,
                status,
            });
        }
        for e in self.entries.drain(..) {
            if next.iter().any(|n| n.path == e.path) {
                continue;
            }
            if matches!(e.status, LibraryStatus::Loaded | LibraryStatus::Loading) {
                next.push(e);
            } else {
                report.removed.push(e.id);
            }
        }
        self.entries = next;
        report.total = self.entries.len();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files;
    impl AdapterFiles for Files {
        fn describe(&self, path: &Path) -> demon_engine::Result<AdapterMetadata> {
            if path.to_string_lossy().contains("broken") {
                return Err(demon_engine::EngineError::param("lora", "broken header"));
            }
            Ok(AdapterMetadata {
                trigger_words: vec!["w".into()],
                ..Default::default()
            })
        }
        fn load(&self, path: &Path) -> demon_engine::Result<demon_engine::LoadedAdapter> {
            Ok(demon_engine::LoadedAdapter::new(path.to_path_buf(), ()))
        }
    }

    #[test]
    fn scans_register_files_and_folders_keep_ids_and_loaded_adapters() {
        let root = std::env::temp_dir().join(format!("demon-lora-library-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("loras");
        std::fs::create_dir_all(dir.join("chill")).unwrap();
        std::fs::create_dir_all(dir.join("peft")).unwrap();
        std::fs::write(dir.join("peft/adapter_config.json"), "{}").unwrap();
        std::fs::write(dir.join("funk.safetensors"), b"x").unwrap();
        std::fs::write(dir.join("chill/dusty tape.safetensors"), b"x").unwrap();
        std::fs::write(dir.join("chill/funk.safetensors"), b"x").unwrap();
        std::fs::write(dir.join("broken.safetensors"), b"x").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.join(".hidden.safetensors"), b"x").unwrap();
        let lib = LoraLibrary::new(vec![dir.clone(), root.join("missing")], Arc::new(Files));
        let mut index = LibraryIndex::default();
        let r = index.merge(lib.scan(), &["house".into()]);
        let ids: Vec<&str> = index.entries().iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["broken", "funk", "peft", "dusty_tape", "funk-2"]);
        assert_eq!(r.added.len(), 5);
        assert!(
            r.problems.iter().any(|p| p.contains("missing")),
            "{:?}",
            r.problems
        );
        assert!(r.problems.iter().any(|p| p.contains("broken header")));
        assert!(matches!(
            index.get("broken").unwrap().status,
            LibraryStatus::Failed { .. }
        ));
        assert_eq!(index.get("dusty_tape").unwrap().group, "chill");
        assert_eq!(index.get("funk").unwrap().group, "loras");
        assert_eq!(index.get("peft").unwrap().metadata.trigger_words, ["w"]);
        // A taken id is skipped.
        std::fs::write(dir.join("house.safetensors"), b"x").unwrap();
        index.set_status("funk", LibraryStatus::Loaded);
        std::fs::remove_file(dir.join("funk.safetensors")).unwrap();
        std::fs::remove_file(dir.join("chill/funk.safetensors")).unwrap();
        let r = index.merge(lib.scan(), &["house".into()]);
        assert_eq!(r.added, ["house-2"]);
        assert_eq!(
            r.removed,
            ["funk-2"],
            "a loaded adapter stays when its file goes"
        );
        assert_eq!(index.get("funk").unwrap().status, LibraryStatus::Loaded);
        assert_eq!(
            index.get("dusty_tape").unwrap().id,
            "dusty_tape",
            "ids are kept"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
