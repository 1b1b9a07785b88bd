//! `pagination.max_records`: an API that serves at most N records per query (HubSpot's
//! search: 10,000 — past it, an error or a silent end). Before a page would pass the cap,
//! the query starts again with the window's start at the greatest `cursor_field` value
//! read; the API sorts by it ascending and filters the start inclusively, so the records
//! sharing that value are read again (written once: upserts) and none is skipped.
//!
//! The run's cursor is `{"from": <ms>|null, "token": <the style's cursor>|null, "read": n}`:
//! where this query starts, the page within it, and the records it has served.

use serde::{Deserialize, Serialize};
use waymark_engine::source::{self, Page, PageRequest};
use waymark_engine::{Timestamp, Window};

use super::http_source::HttpSource;
use super::page::fatal;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Position {
    /// The query's start (ms), when it was started again past the window's.
    from: Option<u64>,
    /// The style's cursor within the query.
    token: Option<String>,
    /// Records the query has served.
    read: u64,
}

impl HttpSource {
    /// One page of a stream whose API caps a query at `cap` records.
    pub(super) async fn fetch_capped(
        &mut self,
        request: PageRequest<'_>,
        cap: u64,
    ) -> Result<Page, source::Error> {
        let at: Position = match request.cursor {
            Some(c) => serde_json::from_str(c)
                .map_err(|e| fatal(format!("journaled capped cursor `{c}` unreadable: {e}")))?,
            None => Position::default(),
        };
        let window = Window {
            start: at.from.map(Timestamp).or(request.window.start),
            end: request.window.end,
        };
        let inner = PageRequest {
            page: request.page,
            cursor: at.token.as_deref(),
            window,
        };
        self.served = (0, None);
        let mut page = self.fetch_page(inner, None).await?;
        let (served, greatest) = self.served;
        let read = at.read + served as u64;
        let size = u64::from(self.stream.page_size);
        let next = match page.next_cursor.take() {
            None => None,
            // The next page fits under the cap.
            Some(token) if read + size <= cap => Some(Position {
                from: at.from,
                token: Some(token),
                read,
            }),
            Some(_) => {
                let from = greatest.ok_or_else(|| {
                    fatal(format!(
                        "the query reached max_records ({cap}) and its last page has no \
                         readable `{}` to start again from",
                        self.stream.cursor_field.as_deref().unwrap_or_default()
                    ))
                })?;
                let start = at.from.map(Timestamp).or(request.window.start);
                if start.is_some_and(|s| from <= s) {
                    return Err(fatal(format!(
                        "more than max_records ({cap}) records share the `{}` value {from}: \
                         the API cannot page past them",
                        self.stream.cursor_field.as_deref().unwrap_or_default()
                    )));
                }
                // A new query: its cursors may be the last one's again (offsets), and the
                // records sharing the boundary come first: neither is a loop.
                self.previous = None;
                self.cycles = Default::default();
                self.cycles_parent = None;
                Some(Position {
                    from: Some(from.0),
                    token: None,
                    read: 0,
                })
            }
        };
        page.next_cursor = next
            .map(|p| serde_json::to_string(&p))
            .transpose()
            .map_err(|e| fatal(format!("capped cursor: {e}")))?;
        Ok(page)
    }
}
