//! End-to-end tests of the real `waymark` binary over loopback HTTP and SQLite.

mod scripted;
mod util;

mod chaos;
mod children;
mod input;
mod journal;
mod pagination;
mod resilience;
mod sandbox;
mod secrets;
mod state_dir;
mod windows;
mod workflows;
