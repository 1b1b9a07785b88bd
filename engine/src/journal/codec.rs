//! The on-disk form of journal values: a versioned header and a checksum around bincode.
//!
//! ```text
//! [b'W'][format version: u8][crc32 of payload: u32 LE][payload: bincode 2, standard config]
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::format;

/// The format version this build writes and reads (2: write acknowledgements count
/// deletions; 3: retries carry their status and rule, ignored pages, rate-limit pauses;
/// 4: a run's head keeps its active time; 5: pages and checkpoints carry the greatest
/// cursor value seen).
pub const FORMAT_VERSION: u8 = 5;
/// The oldest format version this build reads. Version 3 differs only in a run's head,
/// which the journal rebuilds from the run's events (see `Journal::head`).
pub const OLDEST_READABLE: u8 = 3;
const MAGIC: u8 = b'W';
const HEADER: usize = 6;

/// Why a stored value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the header, or the payload ends early.
    #[error("truncated ({0} bytes)")]
    Truncated(usize),
    /// The first byte is not the journal's magic byte.
    #[error("not a journal value (bad magic byte {0:#04x})")]
    BadMagic(u8),
    /// Written by a newer Waymark.
    #[error("written by a newer format version {0} (this build reads version {FORMAT_VERSION})")]
    FutureVersion(u8),
    /// Written by an older Waymark, in a format this build no longer reads.
    #[error("written by format version {0}, which this build no longer reads (it reads versions {OLDEST_READABLE} to {FORMAT_VERSION})")]
    OldVersion(u8),
    /// The payload does not match its checksum.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes found.
        computed: u32,
    },
    /// The checksum matched but the payload does not decode.
    #[error("undecodable payload: {0}")]
    Decode(String),
}

/// Encodes a value with header and checksum.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![MAGIC, FORMAT_VERSION, 0, 0, 0, 0];
    // Encoding plain data into a Vec cannot fail; an error would be a bug in a type's
    // Serialize impl, which the round-trip tests cover. Keep the header so decode reports it.
    if let Err(e) =
        bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
    {
        tracing::error!("journal encode failed: {e}");
    }
    let crc = crc32fast::hash(&out[HEADER..]);
    out[2..HEADER].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The format version a stored value was written in, if it has a header.
pub fn version(bytes: &[u8]) -> Option<u8> {
    (bytes.len() >= HEADER && bytes[0] == MAGIC).then(|| bytes[1])
}

/// Decodes a value, checking header and checksum.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() < HEADER {
        return Err(Error::Truncated(bytes.len()));
    }
    if bytes[0] != MAGIC {
        return Err(Error::BadMagic(bytes[0]));
    }
    if bytes[1] > FORMAT_VERSION {
        return Err(Error::FutureVersion(bytes[1]));
    }
    if bytes[1] < OLDEST_READABLE {
        return Err(Error::OldVersion(bytes[1]));
    }
    let stored = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let payload = &bytes[HEADER..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(Error::Checksum { stored, computed });
    }
    let (value, used) = format::reading(bytes[1], || {
        bincode::serde::decode_from_slice::<T, _>(payload, bincode::config::standard())
    })
    .map_err(|e| Error::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(Error::Decode(format!(
            "{} trailing bytes",
            payload.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_added_in_version_5_reads_as_absent_from_version_4() {
        use crate::checkpoint::Checkpoint;
        use crate::run_id::RunId;
        use crate::time::Timestamp;
        use crate::window::Window;
        let window = Window {
            start: None,
            end: Timestamp(9),
        };
        let run_id = RunId::new();
        // A version-4 checkpoint: the same fields in the same order, without `max_seen`.
        let old = (
            run_id,
            window,
            Some("c3".to_string()),
            3u64,
            30u64,
            false,
            Timestamp(7),
        );
        let mut bytes = encode(&old);
        bytes[1] = 4;
        let read: Checkpoint = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let expected = Checkpoint {
            run_id,
            window,
            cursor: Some("c3".into()),
            page: 3,
            records: 30,
            complete: false,
            at: Timestamp(7),
            max_seen: None,
        };
        assert_eq!(read, expected);
        // The same bytes claiming version 5 lack the field: an error, not a guess.
        bytes[1] = 5;
        assert!(matches!(
            decode::<Checkpoint>(&bytes),
            Err(Error::Decode(_))
        ));
        // Version 5 round-trips it; the thread reads at the current version afterwards.
        let new = Checkpoint {
            max_seen: Some(Timestamp(8)),
            ..expected
        };
        assert_eq!(decode::<Checkpoint>(&encode(&new)), Ok(new.clone()));
        let json = serde_json::to_string(&new).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).ok(), Some(new));
    }

    #[test]
    fn round_trips_and_detects_every_kind_of_damage() {
        let value = (42u64, String::from("cursor-abc"), Some(7u32));
        let bytes = encode(&value);
        assert_eq!(decode::<(u64, String, Option<u32>)>(&bytes), Ok(value));

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert!(matches!(
            decode::<(u64, String, Option<u32>)>(&flipped),
            Err(Error::Checksum { .. })
        ));

        assert_eq!(
            decode::<(u64, String, Option<u32>)>(&bytes[..3]),
            Err(Error::Truncated(3))
        );
        let truncated = &bytes[..bytes.len() - 2];
        assert!(matches!(
            decode::<(u64, String, Option<u32>)>(truncated),
            Err(Error::Checksum { .. })
        ));

        let mut future = bytes.clone();
        future[1] = FORMAT_VERSION + 1;
        assert_eq!(
            decode::<(u64, String, Option<u32>)>(&future),
            Err(Error::FutureVersion(FORMAT_VERSION + 1))
        );
        let mut old = bytes.clone();
        old[1] = OLDEST_READABLE - 1;
        assert_eq!(
            decode::<(u64, String, Option<u32>)>(&old),
            Err(Error::OldVersion(OLDEST_READABLE - 1))
        );

        let mut magic = bytes;
        magic[0] = b'X';
        assert_eq!(
            decode::<(u64, String, Option<u32>)>(&magic),
            Err(Error::BadMagic(b'X'))
        );
    }
}
