//! Running syncs: what `run`, `resume`, `backfill`, `reconcile` and `demo` have in common,
//! below the command line.
//!
//! - [`dry_run`]: `run --dry-run`, the next runs read and written nowhere.
//! - [`invocation`]: the parts one invocation shares, and driving one run.
//! - [`streams`]: a workflow's streams, slice after slice, with their due reconciliations.
//! - [`reconciliation`]: compare, record, repair.
//! - [`webhooks`]: applying a stream's accepted webhook events, as runs of its own scope.

mod dry_run;
mod invocation;
mod reconciliation;
mod streams;
mod webhooks;

pub(crate) use dry_run::dry_run;
pub(crate) use invocation::{api, Invocation};
pub(crate) use reconciliation::{reconcile, Request};
pub(crate) use streams::{prune, resume_run, run_scope, run_stream, run_streams, Ran};
pub(crate) use webhooks::{
    apply_events, existing_inbox, open_inbox, RUNS_KEEP as WEBHOOK_RUNS_KEEP,
};
