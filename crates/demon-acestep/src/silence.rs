//! Reader for `silence_latent.pt` (acestep.md §3.1): a torch zip archive whose single storage
//! `*/data/0` holds raw little-endian f32 `[1, C, T]` (C = 64 latent channels, T = 15 000 frames,
//! i.e. 600 s of VAE-encoded silence). Only the raw storage is read; the pickle that describes
//! it is not needed because the layout is fixed and the channel count comes from the config.

use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{AceStepError, Result};

/// Frames in the published silence latent.
pub const SILENCE_FRAMES: usize = 15_000;

/// Read `path` as `[1, T, C]` (already transposed to the time-major layout the model uses).
/// `channels` is the latent channel count; `None` infers it assuming 15 000 frames.
pub fn read_silence_latent(path: &Path, channels: Option<usize>) -> Result<Tensor> {
    let bytes = read_storage(path)?;
    if bytes.len() % 4 != 0 || bytes.is_empty() {
        return Err(AceStepError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "storage holds {} bytes, not a whole number of f32 values",
                bytes.len()
            ),
        });
    }
    let n = bytes.len() / 4;
    let c = match channels {
        Some(c) => c,
        None if n % SILENCE_FRAMES == 0 => n / SILENCE_FRAMES,
        None => 64,
    };
    if c == 0 || n % c != 0 {
        return Err(AceStepError::invalid(
            path,
            format!("{n} values are not a multiple of {c} channels"),
        ));
    }
    let t = n / c;
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let raw = Tensor::from_vec(values, (1, c, t), &Device::Cpu)?;
    Ok(raw.transpose(1, 2)?.contiguous()?)
}

/// The bytes of the archive's tensor storage (`<name>/data/0`).
fn read_storage(path: &Path) -> Result<Vec<u8>> {
    if !path.is_file() {
        return Err(AceStepError::MissingFile {
            path: path.to_path_buf(),
            what: "silence latent".into(),
        });
    }
    let file = std::fs::File::open(path).map_err(|e| AceStepError::io(path, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| match e {
        zip::result::ZipError::Io(io) => AceStepError::io(path, io),
        other => AceStepError::Truncated {
            path: path.to_path_buf(),
            detail: format!("not a readable torch zip archive ({other})"),
        },
    })?;
    let name = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("/data/0"))
        .ok_or_else(|| {
            AceStepError::invalid(path, "no `*/data/0` tensor storage in the archive")
        })?;
    let mut entry = archive
        .by_name(&name)
        .map_err(|e| AceStepError::invalid(path, format!("cannot open `{name}`: {e}")))?;
    let mut out = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut out)
        .map_err(|e| AceStepError::Truncated {
            path: path.to_path_buf(),
            detail: format!("reading `{name}`: {e}"),
        })?;
    Ok(out)
}
