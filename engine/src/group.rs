//! A group: the pages one write step writes while the next group is fetched ahead.
//!
//! The pages of a group share one sync of their staged bytes and one of the journal, so a
//! `power-loss` run pays those two syncs a group instead of a page; a crash replays up to
//! two groups. Staging's block files, the driver's lookahead and the destinations' replay
//! recognition are sized by these numbers.

/// Pages a step fetches ahead at most; a step writes what is pending: a group (two after
/// a write was retried while a group was fetched ahead).
pub const GROUP: u64 = 8;

/// The staged bytes after which a step fetches no more pages ahead (a group of large pages
/// is smaller than [`GROUP`], so memory stays bounded).
pub const GROUP_BYTES: u64 = 4 << 20;

/// The most pages of a run written before the journal hears of them (two groups): all of
/// them may be replayed after a crash, each expecting its own acknowledgement, so a
/// destination keeps that many of a run's last acknowledgements.
pub const REPLAYABLE: u64 = 2 * GROUP;
