//! The query parameters of list endpoints (or a search's JSON body).

use serde::Deserialize;

/// The query parameters of list endpoints.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    pub(super) limit: Option<usize>,
    pub(super) per_page: Option<usize>,
    pub(super) cursor: Option<String>,
    pub(super) page: Option<u64>,
    pub(super) offset: Option<u64>,
    pub(super) since_id: Option<u64>,
    pub(super) updated_since: Option<String>,
    pub(super) updated_after: Option<String>,
    pub(super) updated_before: Option<String>,
}

impl ListQuery {
    /// These parameters, completed by `other`'s (a search body over its query string).
    pub(super) fn or(self, other: ListQuery) -> ListQuery {
        ListQuery {
            limit: self.limit.or(other.limit),
            per_page: self.per_page.or(other.per_page),
            cursor: self.cursor.or(other.cursor),
            page: self.page.or(other.page),
            offset: self.offset.or(other.offset),
            since_id: self.since_id.or(other.since_id),
            updated_since: self.updated_since.or(other.updated_since),
            updated_after: self.updated_after.or(other.updated_after),
            updated_before: self.updated_before.or(other.updated_before),
        }
    }
}
