//! The sandbox's HTTP surface: [`router`] wires the list endpoints ([`listing`](mod@listing))
//! and the sandbox's own ([`control`](mod@control)).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use self::control::{edit, set_faults, set_mutator, stats, truth};
use self::listing::{list, Feed};
use self::query::ListQuery;
use crate::sandbox::data::Kind;
use crate::sandbox::Sandbox;

mod control;
mod filter;
mod listing;
mod query;

type Shared = State<Arc<Sandbox>>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// A request the sandbox refuses with 400 and this message.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

/// The sandbox's routes.
pub fn router(sandbox: Arc<Sandbox>) -> Router {
    let mut router = Router::new();
    for (name, kind) in [("orders", Kind::Orders), ("customers", Kind::Customers)] {
        router = router
            .route(
                &format!("/{name}"),
                get(
                    move |State(s): Shared, Query(q): Query<ListQuery>, uri: Uri, h: HeaderMap| {
                        list(s, q, uri, h, Feed::Live(kind))
                    },
                ),
            )
            .route(
                &format!("/{name}/deleted"),
                get(
                    move |State(s): Shared, Query(q): Query<ListQuery>, uri: Uri, h: HeaderMap| {
                        list(s, q, uri, h, Feed::Deleted(kind))
                    },
                ),
            )
            .route(
                &format!("/{name}/{{id}}"),
                get(move |State(s): Shared, Path(id): Path<u64>, h: HeaderMap| {
                    listing::one(s, kind, id, h)
                }),
            )
            .route(
                &format!("/{name}/search"),
                post(
                    move |State(s): Shared,
                          Query(q): Query<ListQuery>,
                          uri: Uri,
                          h: HeaderMap,
                          Json(body): Json<ListQuery>| {
                        list(s, body.or(q), uri, h, Feed::Live(kind))
                    },
                ),
            )
            .route(
                &format!("/_truth/{name}"),
                get(move |State(s): Shared| truth(s, kind)),
            );
    }
    router
        .route(
            "/customers/{id}/invoices",
            get(
                |State(s): Shared,
                 Path(id): Path<u64>,
                 Query(q): Query<ListQuery>,
                 uri: Uri,
                 h: HeaderMap| list(s, q, uri, h, Feed::Invoices(id)),
            ),
        )
        .route("/_stats", get(stats))
        .route("/_control/faults", put(set_faults))
        .route("/_control/mutator", put(set_mutator))
        .route("/_control/edit", put(edit))
        .with_state(sandbox)
}

#[cfg(test)]
mod tests {
    use super::filter::instant;
    use super::listing::{decode_cursor, encode_cursor};

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let key = (1_767_225_600_123, 42);
        assert_eq!(decode_cursor(&encode_cursor(key)), Some(key));
        assert_eq!(decode_cursor("p12"), None);
        assert_eq!(decode_cursor("c12"), None);
    }

    #[test]
    fn parses_instants_in_three_forms() {
        assert_eq!(instant("t", "1767225600").ok(), Some(1_767_225_600_000));
        assert_eq!(instant("t", "1767225600123").ok(), Some(1_767_225_600_123));
        assert_eq!(
            instant("t", "2026-01-01T00:00:00.123Z").ok(),
            Some(1_767_225_600_123)
        );
        assert!(instant("t", "yesterday").is_err());
    }
}
