//! Waymark's engine: a resumable sync run as a pure state machine, journaled to sled.
//!
//! # Layout
//! - [`event`]: the journaled facts of a run ([`Event`]).
//! - [`state`]: [`RunState`] and the pure fold [`apply`].
//! - [`decision`]: the pure choice of the next [`Action`] and of retry or failure.
//! - [`journal`]: each run's events in an append-only log; heads and checkpoints in one
//!   ordered key space (sled or memory).
//! - [`durability`]: whether each step waits for the disk or only for the kernel.
//! - [`staging`]: fetched pages on disk, checksummed, until their cursor is committed.
//! - [`group`]: how many pages one write step writes while the next are fetched ahead.
//! - [`driver`]: the only I/O: perform the action, journal the event, fold, repeat.
//! - [`source`], [`destination`]: the traits connectors implement.
//! - [`state_dir`]: the locked state directory that holds journal and staging.
//! - [`reconciliation`]: the figures of one source-to-destination comparison.
//! - [`checkpoint`], [`window`], [`time`]: the values the rest is made of.
//!
//! The engine knows nothing of HTTP, SQL or command lines.
#![deny(missing_docs)]
// No silent numeric casts: `try_from` with an error where a value can be out of range.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod checkpoint;
pub mod decision;
pub mod destination;
pub mod driver;
pub mod durability;
pub mod event;
pub mod fields;
pub mod format;
pub mod group;
pub mod journal;
pub mod lease;
pub mod reconciliation;
pub mod run_id;
pub mod source;
pub mod staging;
pub mod state;
pub mod state_dir;
pub mod time;
pub mod window;
pub mod witness;

pub use checkpoint::Checkpoint;
pub use decision::{decide, Action, Budget, RetryPolicy};
pub use destination::{Batch, Destination, Preparer};
pub use driver::{drive, open, Plan, Settings};
pub use durability::Durability;
pub use event::{Event, PageFetched, PauseReason, RunStarted, StartFrom, WriteAck};
pub use fields::FieldIndex;
pub use journal::Journal;
pub use lease::Lease;
pub use reconciliation::Reconciliation;
pub use run_id::RunId;
pub use source::{Page, PageRequest, Source};
pub use staging::Staging;
pub use state::{apply, fold, RunState, Status};
pub use state_dir::StateDir;
pub use time::{Clock, SystemClock, Timestamp};
pub use window::Window;
