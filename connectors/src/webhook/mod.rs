//! Webhooks: change events an API pushes, beside the polling. [`signature`] checks that a
//! request comes from the API (its signature over the exact raw body, the timestamp within
//! a tolerance) before anything reads it.

pub mod signature;
