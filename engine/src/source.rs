//! What the driver needs from a source: one page at a time.

use std::future::Future;
use std::time::Duration;

use crate::event::FieldChange;
use crate::fields::FieldIndex;
use crate::time::Timestamp;
use crate::window::Window;

/// A request for one page of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest<'a> {
    /// Page number within the run, from 1.
    pub page: u64,
    /// The cursor to send (`None`: the first page of the window).
    pub cursor: Option<&'a str>,
    /// The run's window; its end is the watermark.
    pub window: Window,
}

/// One page of records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The records, each one JSON object as text.
    pub records: Vec<String>,
    /// Where each record's top-level fields are, when the source found them reading the
    /// page (for the destination's [`crate::destination::Preparer`]).
    pub fields: Option<FieldIndex>,
    /// The cursor of the next page; `None` when this is the last.
    pub next_cursor: Option<String>,
    /// Set when a response rule ignored the response: the page is empty and journaled as
    /// ignored, with this explanation.
    pub ignored: Option<Ignored>,
    /// The greatest cursor value of the page's records, read as a time, when the stream's
    /// windows start at the greatest value seen ([`crate::window::Start::MaxSeen`]).
    pub max_seen: Option<Timestamp>,
    /// How the page's records differ in shape from the stream's records before.
    pub drift: Option<SchemaDrift>,
}

/// A page's schema drift: its changes, and whether the stream's policy refuses the page
/// (the run then fails before the page is staged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaDrift {
    /// Each field new, gone or of another type.
    pub changes: Vec<FieldChange>,
    /// The page is not to be written.
    pub refused: bool,
}

/// Why a response was ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ignored {
    /// The HTTP status.
    pub status: Option<u16>,
    /// The response rule that matched.
    pub rule: Option<String>,
    /// What the response said, free of secrets.
    pub reason: String,
}

/// What a failed fetch calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying after a backoff (5xx, timeouts, resets, a malformed page).
    Retry,
    /// The API is rate limiting: retry after `retry_after` (or a backoff); a wait beyond
    /// the run's `max_wait` pauses the run instead.
    RateLimited,
    /// Retrying cannot help (401/403, other 4xx, a broken workflow): the run fails.
    Fatal,
}

/// A failed fetch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// What it calls for.
    pub kind: ErrorKind,
    /// What the server asked for (`Retry-After`, a quota reset), if anything.
    pub retry_after: Option<Duration>,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The workflow's response rule that decided (`None`: the defaults).
    pub rule: Option<String>,
    /// What happened, free of secrets.
    pub message: String,
}

impl Error {
    /// An error of `kind` with nothing but a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            retry_after: None,
            status: None,
            rule: None,
            message: message.into(),
        }
    }

    /// Whether a retry can help.
    pub fn retryable(&self) -> bool {
        self.kind != ErrorKind::Fatal
    }
}

/// A stream of pages. Implemented by connectors; called only by the driver.
pub trait Source: Send {
    /// Fetches one page.
    fn fetch(
        &mut self,
        request: PageRequest<'_>,
    ) -> impl Future<Output = Result<Page, Error>> + Send;
}
