//! What a run refuses from an API, each with an error naming the request (the engine adds
//! the page): pages far larger than asked, cursors too long to journal, and pagination
//! that loops — the same cursor back, the same records again, or cursors that cycle.

use waymark_engine::source::{self, PageRequest};

use super::cycles::excerpt;
use super::http_source::HttpSource;
use super::page::fatal;
use super::pagination::Style;
use crate::config::OversizedPages;

impl HttpSource {
    /// A page of far more records than `page_size` asked for (more than twice as many):
    /// the API may ignore the limit parameter, or it is misnamed. A warning once a run,
    /// or the run fails (`oversized_pages = "fail"`).
    pub(super) fn oversized(
        &mut self,
        what: &str,
        page: u64,
        received: usize,
    ) -> Result<(), source::Error> {
        let Some(limit) = &self.stream.pagination.limit_param else {
            // Nothing was asked: the API chooses its page size.
            return Ok(());
        };
        let asked = self.stream.page_size;
        if u64::try_from(received).unwrap_or(u64::MAX) <= 2 * u64::from(asked) {
            return Ok(());
        }
        let said = format!(
            "{what}: the page brought {received} records where page_size = {asked} were asked \
             (pagination.limit_param `{limit}`); the API may ignore the parameter"
        );
        match self.stream.oversized_pages {
            OversizedPages::Fail => Err(fatal(format!(
                "{said}; stopping as oversized_pages = \"fail\""
            ))),
            OversizedPages::Warn if self.warned_oversized => Ok(()),
            OversizedPages::Warn => {
                self.warned_oversized = true;
                tracing::warn!(
                    "stream {}: page {page}: {said} (warned once a run; oversized_pages = \
                     \"fail\" stops the run instead)",
                    self.stream.name
                );
                Ok(())
            }
        }
    }

    /// Whether a cursor is short enough to journal (`source.max_cursor_bytes`): a page
    /// journals a few copies of its cursors, so a longer one would grow the journal with
    /// every page.
    pub(super) fn fits(&self, cursor: &str) -> Result<(), String> {
        match cursor.len() > self.max_cursor {
            true => Err(format!(
                "the next-page cursor is {} bytes, more than source.max_cursor_bytes = {}; \
                 refusing to journal it (it starts `{}`)",
                cursor.len(),
                self.max_cursor,
                excerpt(cursor)
            )),
            false => Ok(()),
        }
    }

    /// The checks on a page's `next` cursor (journalable already) and records: short
    /// enough to journal, not the cursor just sent, not the previous page's records
    /// (`repeated`), not a cursor an earlier page of the run (of this `parent`) was sent.
    pub(super) fn loop_checks(
        &mut self,
        what: &str,
        request: &PageRequest<'_>,
        parent: Option<String>,
        next: Option<&str>,
        repeated: bool,
    ) -> Result<(), source::Error> {
        if let Some(next) = next {
            self.fits(next)
                .map_err(|why| fatal(format!("{what}: {why}")))?;
        }
        if next.is_some() && next == request.cursor {
            return Err(fatal(format!(
                "{what}: the API returned the cursor it was sent (`{}`); stopping instead of \
                 looping{}",
                excerpt(request.cursor.unwrap_or_default()),
                match self.style {
                    Style::Keyset { id: None, .. } => {
                        " (more records share one cursor_field value than fit on a page: set \
                         pagination.id_param, the API's tie-breaker filter, or a larger page_size)"
                    }
                    _ => "",
                }
            )));
        }
        if repeated {
            return Err(fatal(format!(
                "{what}: the API served the same records as the previous page; stopping \
                 instead of looping (check the pagination settings)"
            )));
        }
        self.cycle(what, request, parent, next)
    }

    /// Stops a run whose pages cycle: `next` was already sent by an earlier page of this
    /// run (of this parent); then notes the cursor `request` was sent with. A child
    /// stream's cursors are compared within one parent.
    fn cycle(
        &mut self,
        what: &str,
        request: &PageRequest<'_>,
        parent: Option<String>,
        next: Option<&str>,
    ) -> Result<(), source::Error> {
        if self.cycles_parent != parent {
            self.cycles.clear();
            self.cycles_parent = parent;
        }
        if let Some(cursor) = request.cursor {
            self.cycles.sent(request.page, cursor);
        }
        let Some(next) = next else {
            return Ok(());
        };
        match self.cycles.seen(request.page, next) {
            Some(earlier) => Err(fatal(format!(
                "{what}: the API sent back the cursor page {earlier} was fetched with (`{}`): \
                 its pages cycle; stopping instead of looping (check the pagination settings)",
                excerpt(next)
            ))),
            None => Ok(()),
        }
    }
}
