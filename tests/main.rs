//! End-to-end tests of the real `waymark` binary over loopback HTTP and SQLite.

mod crm;
mod pg;
mod scripted;
mod util;

mod attach;
mod chaos;
mod children;
mod cluster;
mod conditional;
mod conformance;
mod drift;
mod dry_run;
mod escapes;
mod fixtures;
mod hostile;
mod input;
mod journal;
mod mapping;
mod operator;
mod output;
mod pagination;
mod reconcile;
mod resilience;
mod sandbox;
mod secrets;
mod serve;
mod state_dir;
mod tenants;
mod transient;
mod web;
mod webhooks;
mod windows;
mod workflows;
