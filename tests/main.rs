//! End-to-end tests of the real `waymark` binary over loopback HTTP and SQLite.

mod util;

mod chaos;
mod children;
mod input;
mod journal;
mod pagination;
mod sandbox;
mod state_dir;
mod windows;
mod workflows;
