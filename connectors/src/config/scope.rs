//! Checkpoint scopes: a stream, a backfill of it, a repair of it, a dead-letter retry, the
//! application of its webhook events.

use waymark_engine::Timestamp;

/// The checkpoint scope of a backfill of `stream` over `[from, to)`: its runs and
/// checkpoint are its own, so it never moves the stream's incremental checkpoint.
pub fn backfill_scope(stream: &str, from: Timestamp, to: Timestamp) -> String {
    format!("{stream}@backfill:{from}..{to}")
}

/// The checkpoint scope of a reconciliation's repair runs of `stream`.
pub fn repair_scope(stream: &str) -> String {
    format!("{stream}{REPAIR}")
}

const REPAIR: &str = "@repair";

/// The checkpoint scope of the runs applying `stream`'s webhook events.
pub fn webhook_scope(stream: &str) -> String {
    format!("{stream}{WEBHOOK}")
}

const WEBHOOK: &str = "@webhook";

/// Whether a checkpoint scope is a webhook's.
pub fn is_webhook_scope(scope: &str) -> bool {
    scope.ends_with(WEBHOOK)
}

/// Whether a checkpoint scope is a reconciliation's repair.
pub fn is_repair_scope(scope: &str) -> bool {
    scope.ends_with(REPAIR)
}

/// The stream of a checkpoint scope (a stream, a backfill, a repair or a dead-letter
/// retry of it), and the range if it is a backfill's.
pub fn parse_scope(scope: &str) -> (&str, Option<(Timestamp, Timestamp)>) {
    let Some((stream, range)) = scope.split_once("@backfill:") else {
        return (
            scope.split_once('@').map_or(scope, |(stream, _)| stream),
            None,
        );
    };
    let parse = |t: &str| {
        humantime::parse_rfc3339_weak(t)
            .ok()
            .map(Timestamp::from_system)
    };
    let bounds = range
        .split_once("..")
        .and_then(|(from, to)| Some((parse(from)?, parse(to)?)));
    (stream, bounds)
}
