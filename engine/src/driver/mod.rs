//! The driver: the only part of the engine that performs I/O.
//!
//! [`open`] starts a stream's run or picks up its unfinished one; [`drive`] loops: decide
//! the next action from the state (pure), perform it through the [`Source`], [`Staging`]
//! or [`Destination`], append the resulting events to the journal as one batch (flushed
//! once where [`Event::needs_flush`] says), fold them, repeat.
//!
//! - [`open`](mod@open): start or resume a run; the next window.
//! - [`run`](mod@run): [`drive`], the loop.
//! - [`plan`](mod@plan), [`error`](mod@error): its inputs and failures.

mod error;
mod open;
mod plan;
mod run;

pub use error::Error;
pub use open::{open, resume, sliced, window_after};
pub use plan::{Plan, Settings};
pub use run::drive;
