//! Webhooks: change events an API pushes, beside the polling. [`signature`] checks that a
//! request comes from the API (its signature over the exact raw body, the timestamp within
//! a tolerance) before anything reads it; [`inbox`] keeps what was accepted, durably and
//! once per event id, until it is applied.

pub mod inbox;
pub mod signature;
