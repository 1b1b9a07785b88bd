//! What the driver needs from a source: one page at a time.

use std::future::Future;
use std::time::Duration;

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
    /// The cursor of the next page; `None` when this is the last.
    pub next_cursor: Option<String>,
}

/// A failed fetch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Worth retrying (429, 5xx, timeouts, resets, a malformed page).
    pub retryable: bool,
    /// What the server asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// What happened, free of secrets.
    pub message: String,
}

/// A stream of pages. Implemented by connectors; called only by the driver.
pub trait Source: Send {
    /// Fetches one page.
    fn fetch(
        &mut self,
        request: PageRequest<'_>,
    ) -> impl Future<Output = Result<Page, Error>> + Send;
}
