//! Fields added to journaled types after the first format: how a value written before a
//! field existed reads. A leaf module, so the journaled types can name it without
//! depending on the journal.

use std::cell::Cell;

use serde::{Deserialize, Deserializer};

thread_local! {
    /// The format version of the journal value being decoded on this thread (`None`:
    /// not a journal value, e.g. the JSON a destination keeps).
    static READING: Cell<Option<u8>> = const { Cell::new(None) };
}

/// Runs `decode` on a journal value written in format `version` (fields added later read
/// as absent while it runs).
pub(crate) fn reading<T>(version: u8, decode: impl FnOnce() -> T) -> T {
    let before = READING.with(|r| r.replace(Some(version)));
    let out = decode();
    READING.with(|r| r.set(before));
    out
}

/// Reads a field added in format version 5: a journal value written before has none
/// (bincode writes fields in order, without names, so the field is simply not there), and
/// reads as the default. Use with `#[serde(default, deserialize_with = "...")]`; other
/// formats (a destination's JSON) read the field when it is present.
pub fn added_in_v5<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    match READING.with(Cell::get) {
        Some(version) if version < 5 => Ok(T::default()),
        _ => T::deserialize(d),
    }
}
