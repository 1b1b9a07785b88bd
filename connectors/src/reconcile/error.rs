//! Why a reconciliation could not be made.

use std::path::{Path, PathBuf};

use waymark_engine::source::{self};

/// Why a reconciliation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scratch or repair file failed.
    #[error("reconciliation scratch file {path}: {source}")]
    Scratch {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The scratch directory could not be made.
    #[error("reconciliation scratch directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The source could not be read to the end.
    #[error("reading the source: {0}")]
    Source(#[from] source::Error),
    /// The destination could not be read.
    #[error("reading the destination: {0}")]
    Destination(#[from] waymark_engine::destination::Error),
    /// A stop was requested (nothing was changed).
    #[error("interrupted; nothing was changed")]
    Interrupted,
}

pub(super) fn scratch(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| Error::Scratch {
        path: path.to_path_buf(),
        source,
    }
}
