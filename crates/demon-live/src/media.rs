//! Media folders: the only places a file-path source (from a WebSocket, REST, MCP or OSC
//! client, a preset or a session file) may be read from. Uploads remain the way to bring audio
//! in from anywhere else.
//!
//! A path is resolved inside each folder in turn (absolute paths as they are), canonicalised
//! (so `..` and symlinks are followed to where they really lead) and accepted only when the
//! result lies inside a folder and is a regular file: no FIFOs, devices or directories, which
//! could block a reader or stream without end. Every refusal has the same message, whether or
//! not the path exists, so a client cannot probe the server's file system.

use std::path::{Path, PathBuf};

use crate::error::{SessionError, SessionResult};

/// The folders file sources may come from (canonicalised at each look-up, so a folder created
/// after start-up counts).
#[derive(Clone, Debug, Default)]
pub struct MediaDirs {
    dirs: Vec<PathBuf>,
}

/// The one refusal for any path outside the media folders, missing or not a regular file.
pub const REFUSAL: &str = "is not a regular file inside the media folders (--media-dir); upload the file to use audio from elsewhere";

impl MediaDirs {
    /// Relative folders are taken from the current directory now.
    pub fn new(dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        let cwd = std::env::current_dir().unwrap_or_default();
        Self {
            dirs: dirs.into_iter().map(|d| cwd.join(d)).collect(),
        }
    }

    /// The folders that exist now, canonicalised (the others hold nothing to read).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for d in &self.dirs {
            if let Ok(c) = d.canonicalize()
                && c.is_dir()
                && !out.contains(&c)
            {
                out.push(c);
            }
        }
        out
    }

    /// The canonical path of a regular file inside a media folder, or the one refusal.
    pub fn resolve(&self, path: &str) -> SessionResult<PathBuf> {
        let refuse = || SessionError::bad_source(path, REFUSAL);
        if path.is_empty() || path.contains('\0') {
            return Err(refuse());
        }
        let dirs = self.dirs();
        let asked = Path::new(path);
        let candidates: Vec<PathBuf> = if asked.is_absolute() {
            vec![asked.to_path_buf()]
        } else {
            dirs.iter().map(|d| d.join(asked)).collect()
        };
        for c in candidates {
            let Ok(real) = c.canonicalize() else {
                continue;
            };
            let inside = dirs.iter().any(|d| real.starts_with(d));
            // `metadata` follows no further links: `real` has none left.
            let regular = std::fs::metadata(&real).is_ok_and(|m| m.is_file());
            if inside && regular {
                return Ok(real);
            }
        }
        Err(refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_inside_the_folders_resolve_with_one_refusal() {
        let root = std::env::temp_dir().join(format!("demon-media-{}", std::process::id()));
        let media = root.join("media");
        let outside = root.join("outside");
        std::fs::create_dir_all(media.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(media.join("sub/loop.wav"), b"RIFF").unwrap();
        std::fs::write(outside.join("x.wav"), b"RIFF").unwrap();
        let dirs = MediaDirs::new([media.clone(), root.join("missing")]);
        assert_eq!(dirs.dirs().len(), 1);
        let want = media.join("sub/loop.wav").canonicalize().unwrap();
        assert_eq!(dirs.resolve("sub/loop.wav").unwrap(), want);
        assert_eq!(dirs.resolve(want.to_str().unwrap()).unwrap(), want);
        assert_eq!(dirs.resolve("sub/../sub/loop.wav").unwrap(), want);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.join("x.wav"), media.join("link.wav")).unwrap();
            std::os::unix::fs::symlink(&want, media.join("inner.wav")).unwrap();
            assert_eq!(dirs.resolve("inner.wav").unwrap(), want);
            let fifo = media.join("pipe.wav");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        }
        let outside_abs = outside.join("x.wav");
        let mut refused = vec![
            "/etc/passwd",
            "../outside/x.wav",
            "../x.wav",
            "sub",
            "nope.wav",
            "",
            outside_abs.to_str().unwrap(),
        ];
        if cfg!(unix) {
            refused.extend(["link.wav", "pipe.wav"]);
        }
        for p in refused {
            let e = dirs.resolve(p).unwrap_err();
            assert_eq!(e, SessionError::bad_source(p, REFUSAL), "{p}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
