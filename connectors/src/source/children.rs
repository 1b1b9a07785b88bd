//! Child streams: one parent record at a time, read in key order through [`Parents`]
//! (the destination holding the parent stream implements it; the binary injects it), so
//! the source never imports a destination. The cursor is `{parent key, inner cursor}`.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use waymark_engine::destination;

/// Where a child stream reads its parent stream's records: the destination that holds
/// the parent stream, read in key order. Only the current parent's key is kept by the
/// source, however many parents there are. A transient failure (a lost connection) is
/// retried like a failed request.
pub trait Parents: Send + Sync {
    /// The first live parent after `key` (from the first one when `None`), in key order,
    /// with its record.
    fn after<'a>(
        &'a self,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, Value)>, destination::Error>>;

    /// The live parent with `key`, if it is still there.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>, destination::Error>>;
}

/// A child stream's position: the current parent and the cursor within its pages.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ChildCursor {
    pub(super) parent: String,
    pub(super) cursor: Option<String>,
}
