//! JSON files, optionally gzip-compressed: the one reader and writer of the crate's versioned
//! files (model artifacts, global-signals snapshots).
//!
//! Writing compresses when the path ends in `.gz` (no timestamp or file name in the gzip header:
//! same value, same bytes); reading detects gzip by its magic bytes, whatever the name.

use std::io::{Read, Write};
use std::path::Path;

/// Serializes `value` as JSON to `path` (parent folders created).
pub fn write<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), JsonFileError> {
    let file = path.display().to_string();
    let io = |source| JsonFileError::Io {
        file: file.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let json = serde_json::to_vec(value).map_err(|source| JsonFileError::Json {
        file: file.clone(),
        source,
    })?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        enc.write_all(&json).map_err(io)?;
        enc.finish().map_err(io)?
    } else {
        json
    };
    std::fs::write(path, bytes).map_err(io)
}

/// Reads a file's JSON bytes, decompressing gzip.
pub fn read(path: &Path) -> Result<Vec<u8>, JsonFileError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| JsonFileError::Io {
        file: file.clone(),
        source,
    })?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut json)
        .map_err(|source| JsonFileError::Gzip { file, source })?;
    Ok(json)
}

/// Errors of [`read`] and [`write`].
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    /// File system error.
    #[error("{file}: {source}")]
    Io {
        /// path
        file: String,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// Not serializable as JSON.
    #[error("{file}: {source}")]
    Json {
        /// path
        file: String,
        /// cause
        #[source]
        source: serde_json::Error,
    },
    /// Starts like gzip but does not decompress.
    #[error("{file}: corrupt gzip: {source}")]
    Gzip {
        /// path
        file: String,
        /// cause
        #[source]
        source: std::io::Error,
    },
}
