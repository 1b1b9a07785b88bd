//! Why a source could not be built.

/// Why the source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The records path is not a JSONPath.
    #[error("records: {0}")]
    Records(String),
    /// The stream's observed schema cannot be read.
    #[error("{0}")]
    Schema(#[from] crate::state::schema::Error),
    /// A child stream's parent records cannot be read.
    #[error("{0}")]
    Parent(String),
    /// The pagination settings are incomplete (validation normally catches this first).
    #[error("stream.{stream}.pagination: {message}")]
    Pagination {
        /// The stream.
        stream: String,
        /// What is missing.
        message: String,
    },
}
