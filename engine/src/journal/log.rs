//! A run's log: its events, appended in order, each framed and checksummed.
//!
//! ```text
//! frame: [length of value: u32 LE][value: codec-framed (seq: u64, event)]
//! ```
//!
//! A log is read up to its first frame that is incomplete or unreadable with nothing
//! readable after it: that is a write a crash cut short (the step it held was never
//! acknowledged, so it is dropped and the log cut there before the run appends again). A
//! whole frame that does not read but is followed by one that does is damage: reported in
//! its place, and read past.

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
    /// Each frame of the readable prefix in order: its event with its sequence number, or
    /// a damaged frame's (the previous one's plus one) and what is wrong with it.
    pub frames: Vec<Result<(u64, Event), (u64, codec::Error)>>,
    /// Bytes in the readable prefix.
    pub valid: usize,
    /// Where the prefix's last frame starts.
    pub last: usize,
    /// Bytes after it, and why the first of them is not a frame.
    pub tail: Option<(usize, String)>,
}

/// A frame that does not read: cut short, or whole but unreadable (and where it ends).
enum Unread {
    Incomplete(&'static str),
    Damaged(codec::Error, usize),
}

/// One frame at `at`: the event and where the next frame starts, or why it does not read.
fn read_frame(bytes: &[u8], at: usize) -> Result<((u64, Event), usize), Unread> {
    let Some(length) = bytes.get(at..at + LENGTH) else {
        return Err(Unread::Incomplete("a frame's length is cut short"));
    };
    let mut word = [0u8; LENGTH];
    word.copy_from_slice(length);
    let end = (at + LENGTH).saturating_add(u32::from_le_bytes(word) as usize);
    let Some(value) = bytes.get(at + LENGTH..end) else {
        return Err(Unread::Incomplete("a frame is cut short"));
    };
    codec::decode::<(u64, Event)>(value)
        .map(|event| (event, end))
        .map_err(|e| Unread::Damaged(e, end))
}

/// Reads a log's frames.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut at = 0usize;
    let mut last = 0u64;
    while at < bytes.len() {
        match read_frame(bytes, at) {
            Ok(((seq, event), end)) => {
                last = seq;
                parsed.frames.push(Ok((seq, event)));
                parsed.last = at;
                at = end;
            }
            Err(Unread::Damaged(error, end)) if read_frame(bytes, end).is_ok() => {
                last += 1;
                parsed.frames.push(Err((last, error)));
                parsed.last = at;
                at = end;
            }
            Err(unread) => {
                // Damage longer than a frame (a length word hit, a bad sector over several
                // frames) is followed by frames of later steps; a write a crash cut short is
                // the end of the log.
                if let Some(next) = next_readable(bytes, at, last) {
                    let error = match unread {
                        Unread::Damaged(error, _) => error,
                        Unread::Incomplete(_) => codec::Error::Truncated(next - at),
                    };
                    last += 1;
                    parsed.frames.push(Err((last, error)));
                    parsed.last = at;
                    at = next;
                    continue;
                }
                let why = match unread {
                    Unread::Incomplete(why) => why.to_string(),
                    Unread::Damaged(error, _) => error.to_string(),
                };
                parsed.tail = Some((bytes.len() - at, why));
                break;
            }
        }
    }
    parsed.valid = at;
    parsed
}

/// Where the first readable frame of a step after `last` starts past `at`, if any (only on
/// the way past bytes that do not read: at most the rest of the log is tried, offset by
/// offset, and a checksum rejects nearly every wrong one at once).
fn next_readable(bytes: &[u8], at: usize, last: u64) -> Option<usize> {
    (at + 1..bytes.len()).find(|&p| matches!(read_frame(bytes, p), Ok(((seq, _), _)) if seq > last))
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
    fn a_log_reads_back_up_to_a_write_cut_short_and_past_damage() {
        let seqs = |parsed: &Parsed| -> Vec<Result<u64, u64>> {
            parsed
                .frames
                .iter()
                .map(|f| f.as_ref().map(|(s, _)| *s).map_err(|(s, _)| *s))
                .collect()
        };
        let whole = log(3);
        let parsed = parse(&whole);
        assert_eq!(seqs(&parsed), vec![Ok(1), Ok(2), Ok(3)]);
        assert_eq!(parsed.valid, whole.len());
        assert!(parsed.tail.is_none());
        let second = parse(&log(1)).valid;
        let third = parse(&log(2)).valid;

        // Every cut inside the last frame keeps the first two and says what follows.
        for cut in third..whole.len() {
            let parsed = parse(&whole[..cut]);
            assert_eq!(seqs(&parsed), vec![Ok(1), Ok(2)], "cut at {cut}");
            assert_eq!(parsed.valid, third);
            assert_eq!(
                parsed.tail.map(|(bytes, _)| bytes),
                (cut > third).then_some(cut - third)
            );
        }

        // A flipped byte in the second of three frames: damage in its place, read past.
        let mut flipped = whole.clone();
        flipped[second + 12] ^= 0x40;
        let parsed = parse(&flipped);
        assert_eq!(seqs(&parsed), vec![Ok(1), Err(2), Ok(3)]);
        assert!(matches!(
            parsed.frames[1],
            Err((2, codec::Error::Checksum { .. }))
        ));
        assert!(parsed.tail.is_none());
        // The same damage in the last frame reads as a write cut short.
        let mut last = whole.clone();
        last[third + 12] ^= 0x40;
        let parsed = parse(&last);
        assert_eq!(seqs(&parsed), vec![Ok(1), Ok(2)]);
        assert!(parsed
            .tail
            .is_some_and(|(bytes, why)| bytes == whole.len() - third && why.contains("checksum")));

        // Damage longer than a frame, with later steps after it, is damage too (the log is
        // not cut there): a length word made huge, two frames in a row.
        let five = log(5);
        let starts: Vec<usize> = (0..5).map(|n| parse(&log(n)).valid).collect();
        let mut huge = five.clone();
        huge[starts[1] + 3] = 0xff;
        let parsed = parse(&huge);
        assert_eq!(seqs(&parsed), vec![Ok(1), Err(2), Ok(3), Ok(4), Ok(5)]);
        assert!(matches!(
            parsed.frames[1],
            Err((2, codec::Error::Truncated(_)))
        ));
        assert!(parsed.tail.is_none());
        let mut two = five.clone();
        two[starts[1] + 12] ^= 0x40;
        two[starts[2] + 12] ^= 0x40;
        let parsed = parse(&two);
        assert_eq!(seqs(&parsed), vec![Ok(1), Err(2), Ok(4), Ok(5)]);
        assert!(parsed.tail.is_none());
        assert_eq!(parsed.valid, five.len());
    }
}
