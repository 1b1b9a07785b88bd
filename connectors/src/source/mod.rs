//! The HTTP source: one request per page, in any of six pagination styles, with loop
//! checks.
//!
//! The engine's cursor is an opaque string; each style decides what it holds: the API's
//! token (`cursor`), the next page's URL (`next_url`, `link_header`), a page number, an
//! offset, or the last `(cursor_field, primary_key)` seen as a JSON pair (`keyset`).
//!
//! # Layout
//! - [`http_source`]: [`HttpSource`], what the engine calls.
//! - [`pagination`]: the styles and their cursors; [`page`]: reading a page's body.
//! - [`guards`]: what a run refuses (oversized pages, overlong cursors, loops);
//!   [`cycles`]: noticing cursors that cycle, in bounded memory.
//! - [`partitions`]: a window's partitions read at once (`concurrency`).
//! - [`children`]: child streams, through the [`Parents`] trait.
//! - [`template`]: rendering request templates.
//!
//! Invariant: nothing here imports a destination (`crate::sink`).

mod capped;
mod children;
mod cycles;
mod error;
pub mod etags;
mod guards;
mod http_source;
mod page;
mod pagination;
mod partitions;
pub mod template;
#[cfg(test)]
mod tests;

pub use children::Parents;
pub use error::Error;
pub use http_source::HttpSource;
pub use pagination::link_next;
