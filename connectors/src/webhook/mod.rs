//! Webhooks: change events an API pushes, beside the polling. [`hook`] decides on a request
//! (size, content type, signature, event id); [`signature`] checks that a
//! request comes from the API (its signature over the exact raw body, the timestamp within
//! a tolerance) before anything reads it; [`inbox`] keeps what was accepted, durably and
//! once per event id, until it is applied; [`apply`] serves it as the pages of a journaled
//! run of the stream's webhook scope.

pub mod apply;
pub mod hook;
pub mod inbox;
pub mod signature;
