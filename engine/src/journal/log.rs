//! A run's log: its events, appended in order, each framed and checksummed.
//!
//! ```text
//! frame: [length of value: u32 LE][value: codec-framed (seq: u64, event)]
//! ```
//!
//! A log is read up to its first frame that is incomplete or fails its checksum: what
//! follows is a write that a crash cut short (the step it held was never acknowledged, so
//! it is dropped and the log cut there before the run appends again).

use super::codec;
use crate::event::Event;

const LENGTH: usize = 4;

/// Appends one event's frame to `out`.
pub fn frame(out: &mut Vec<u8>, seq: u64, event: &Event) {
    let value = codec::encode(&(seq, event));
    let length = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&value);
}

/// What a log holds.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The events of the readable prefix, in order, with their sequence numbers.
    pub events: Vec<(u64, Event)>,
    /// Bytes in the readable prefix.
    pub valid: usize,
    /// Bytes after it, and why the first of them is not a frame.
    pub tail: Option<(usize, String)>,
    /// A damaged frame that readable frames follow — damage, not a write cut short: its
    /// sequence number and what is wrong with it.
    pub damaged: Option<(u64, codec::Error)>,
}

/// One frame at `at`: the event and where the next frame starts, or what is wrong.
fn read_frame(bytes: &[u8], at: usize) -> Result<((u64, Event), usize), (String, Frame)> {
    let Some(length) = bytes.get(at..at + LENGTH) else {
        return Err(("a frame's length is cut short".into(), Frame::Incomplete));
    };
    let mut word = [0u8; LENGTH];
    word.copy_from_slice(length);
    let end = (at + LENGTH).saturating_add(u32::from_le_bytes(word) as usize);
    let Some(value) = bytes.get(at + LENGTH..end) else {
        return Err(("a frame is cut short".into(), Frame::Incomplete));
    };
    codec::decode::<(u64, Event)>(value)
        .map(|event| (event, end))
        .map_err(|e| (e.to_string(), Frame::Unreadable(e, end)))
}

/// A frame that does not read: cut short, or whole but unreadable (and where it ends).
enum Frame {
    Incomplete,
    Unreadable(codec::Error, usize),
}

/// Reads a log's frames.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut at = 0usize;
    while at < bytes.len() {
        match read_frame(bytes, at) {
            Ok((event, end)) => {
                parsed.events.push(event);
                at = end;
            }
            Err((problem, frame)) => {
                if let Frame::Unreadable(error, end) = frame {
                    if read_frame(bytes, end).is_ok() {
                        let seq = parsed.events.last().map_or(1, |(seq, _)| seq + 1);
                        parsed.damaged = Some((seq, error));
                    }
                }
                parsed.tail = Some((bytes.len() - at, problem));
                break;
            }
        }
    }
    parsed.valid = at;
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn log(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in 1..=n {
            frame(
                &mut out,
                seq,
                &Event::CursorCommitted {
                    page: seq,
                    at: Timestamp(seq),
                },
            );
        }
        out
    }

    #[test]
    fn a_log_reads_back_up_to_its_first_damaged_frame() {
        let whole = log(3);
        let parsed = parse(&whole);
        assert_eq!(parsed.events.len(), 3);
        assert_eq!(parsed.valid, whole.len());
        assert!(parsed.tail.is_none());
        let third = parse(&log(2)).valid;

        // Every cut inside the last frame keeps the first two and says what follows.
        for cut in third..whole.len() {
            let parsed = parse(&whole[..cut]);
            let seqs: Vec<u64> = parsed.events.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, vec![1, 2], "cut at {cut}");
            assert_eq!(parsed.valid, third);
            assert_eq!(
                parsed.tail.map(|(bytes, _)| bytes),
                (cut > third).then_some(cut - third)
            );
        }

        assert!(parse(&whole[..whole.len() - 1]).damaged.is_none());

        // A flipped byte in the second of three frames: damage, named by its sequence
        // number, since a readable frame follows it.
        let mut flipped = whole.clone();
        let second = parse(&log(1)).valid;
        flipped[second + 12] ^= 0x40;
        let parsed = parse(&flipped);
        assert_eq!(parsed.events.len(), 1);
        assert!(parsed
            .tail
            .is_some_and(|(bytes, why)| bytes == whole.len() - second && why.contains("checksum")));
        assert!(matches!(
            parsed.damaged,
            Some((2, codec::Error::Checksum { .. }))
        ));
        // The same damage in the last frame reads as a write cut short.
        let mut last = whole.clone();
        last[third + 12] ^= 0x40;
        let parsed = parse(&last);
        assert_eq!((parsed.events.len(), parsed.damaged.is_none()), (2, true));
    }
}
