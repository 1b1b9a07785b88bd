//! A workflow file that cannot be used, and where in the file the problem is.

use std::path::PathBuf;

/// A workflow file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A key that is unknown, missing, of the wrong type, or does not make sense.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key (or of its table when the key is missing).
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key path (`stream.orders.primary_key`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// No stream of that name.
    #[error("{path}: no stream named `{name}` (streams: {known})")]
    UnknownStream {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The streams the file has.
        known: String,
    },
}
