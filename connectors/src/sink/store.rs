//! What a destination's storage must offer so that [`Upserting`](super::Upserting) can keep
//! the write protocol for it: a transaction, the last commit of a checkpoint scope, what is
//! stored for a batch's keys, applying the planned changes, and the checkpoint stored in
//! the same transaction.

use std::collections::HashMap;
use std::future::Future;

use serde::{Deserialize, Serialize};
use waymark_engine::destination::Error;
use waymark_engine::group::REPLAYABLE;
use waymark_engine::{Checkpoint, Lease, WriteAck};

use super::plan::{Plan, Stored};

/// The last batch a checkpoint scope committed: what recognises a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The run that wrote it.
    pub run: String,
    /// Its page.
    pub page: u64,
    /// The acknowledgement stored with it.
    pub ack: WriteAck,
    /// The acknowledgements of the same run's pages committed before it, oldest first (at
    /// most [`REPLAYABLE`] − 1): a group of pages replayed after a crash gets each page's
    /// own.
    pub earlier: Earlier,
}

impl Commit {
    /// What a scope keeps after `run` commits `page` with `ack`, `last` being its previous
    /// commit.
    pub fn after(last: Option<&Commit>, run: &str, page: u64, ack: WriteAck) -> Commit {
        let mut earlier = Vec::new();
        if let Some(last) = last.filter(|l| l.run == run && l.page < page) {
            earlier.extend(last.earlier.0.iter().copied());
            earlier.push((last.page, last.ack));
            let keep = REPLAYABLE - 1;
            let drop = (earlier.len() as u64).saturating_sub(keep);
            earlier.drain(..usize::try_from(drop).unwrap_or(0));
        }
        Commit {
            run: run.to_string(),
            page,
            ack,
            earlier: Earlier(earlier),
        }
    }

    /// The stored acknowledgement of `run`'s `page` if this scope committed it already (a
    /// replay after a crash), marked `replayed`. A page older than those kept (the journal
    /// more than [`REPLAYABLE`] pages behind) counts nothing.
    pub fn replayed(&self, run: &str, page: u64) -> Option<WriteAck> {
        if self.run != run || page > self.page {
            return None;
        }
        let ack = match page == self.page {
            true => Some(self.ack),
            false => self
                .earlier
                .0
                .iter()
                .find(|(p, _)| *p == page)
                .map(|(_, a)| *a),
        };
        let ack = ack.unwrap_or_else(|| {
            tracing::warn!(
                run,
                page,
                "page {page} was committed already; its counts were not kept"
            );
            WriteAck::default()
        });
        Some(WriteAck {
            replayed: true,
            ..ack
        })
    }

    /// The acknowledgement as a store keeps it: JSON, with the earlier ones.
    pub(crate) fn ack_text(&self) -> Result<String, Error> {
        serde_json::to_string(&StoredAck {
            ack: self.ack,
            earlier: self.earlier.clone(),
        })
        .map_err(|e| Error::permanent(format!("acknowledgement encoding: {e}")))
    }
}

/// A run's earlier pages and their acknowledgements, kept compact as
/// `[page, inserted, updated, unchanged, stale, dead-lettered, deleted]` arrays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Earlier(pub Vec<(u64, WriteAck)>);

impl Earlier {
    /// Nothing kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Earlier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(page, a)| {
            [
                *page,
                a.inserted,
                a.updated,
                a.unchanged,
                a.skipped_stale,
                a.dead_lettered,
                a.deleted,
            ]
        }))
    }
}

impl<'de> Deserialize<'de> for Earlier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let rows = Vec::<[u64; 7]>::deserialize(d)?;
        Ok(Earlier(
            rows.into_iter()
                .map(
                    |[page, inserted, updated, unchanged, skipped_stale, dead_lettered, deleted]| {
                        let ack = WriteAck {
                            inserted,
                            updated,
                            unchanged,
                            skipped_stale,
                            dead_lettered,
                            deleted,
                            replayed: false,
                        };
                        (page, ack)
                    },
                )
                .collect(),
        ))
    }
}

/// An acknowledgement as a SQL store keeps it (a JSON object; `earlier` is absent from
/// what older versions wrote).
#[derive(Serialize, Deserialize)]
struct StoredAck {
    #[serde(flatten)]
    ack: WriteAck,
    #[serde(default, skip_serializing_if = "Earlier::is_empty")]
    earlier: Earlier,
}

/// One stream's storage in a destination (its table, and the scope's checkpoint). Every
/// call between [`Store::begin`] and [`Store::commit`] or [`Store::rollback`] belongs to one
/// transaction: nothing of it is visible, or durable, before the commit.
pub trait Store: Send + 'static {
    /// Whether the calls block the thread (SQLite, files): a whole write then runs on a
    /// blocking thread, so the driver fetches the next page meanwhile.
    const BLOCKING: bool;

    /// Begins a batch's transaction (reconnecting first if the connection was lost).
    fn begin(&mut self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The last batch this scope committed, read in the transaction (and locked, where
    /// writers could race).
    fn last_commit(&mut self) -> impl Future<Output = Result<Option<Commit>, Error>> + Send;

    /// What is stored for each of `keys` that is there (for a hard-deleted key: its
    /// remembered deletion).
    fn stored(
        &mut self,
        keys: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, Stored>, Error>> + Send;

    /// Applies the batch's planned changes, written by `run` as `page`.
    fn apply(
        &mut self,
        run: &str,
        page: u64,
        plan: &Plan<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stores the scope's checkpoint and its commit (the batch's run, page and
    /// acknowledgement, with the earlier ones of the run).
    fn put_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
        commit: &Commit,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Commits: the batch and its checkpoint become durable together.
    fn commit(&mut self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Abandons the transaction after a failure (best effort: a lost connection has
    /// abandoned it already).
    fn rollback(&mut self) -> impl Future<Output = ()> + Send;

    /// The checkpoint stored with the scope's last committed batch.
    fn checkpoint(&mut self) -> impl Future<Output = Result<Option<Checkpoint>, Error>> + Send;

    /// Claims the scope for a cluster lease (see [`Destination::fence`]); a store that
    /// cannot check a token in its own transaction refuses (the default).
    fn fence(&mut self, lease: &Lease) -> impl Future<Output = Result<(), Error>> + Send {
        let token = lease.token;
        async move {
            Err(Error::permanent(format!(
                "this destination keeps its data in local files and cannot check a lease \
                 token ({token}): a cluster of workers needs a PostgreSQL destination"
            )))
        }
    }
}

/// The checkpoint and acknowledgements as a SQL store keeps them (JSON text).
pub(crate) fn encode(checkpoint: &Checkpoint, commit: &Commit) -> Result<(String, String), Error> {
    let checkpoint = serde_json::to_string(checkpoint)
        .map_err(|e| Error::permanent(format!("checkpoint encoding: {e}")))?;
    Ok((checkpoint, commit.ack_text()?))
}

/// A checkpoint a SQL store kept.
pub(crate) fn decode_checkpoint(stored: &str) -> Result<Checkpoint, Error> {
    serde_json::from_str(stored)
        .map_err(|e| Error::permanent(format!("stored checkpoint unreadable: {e}")))
}

/// A SQL store's checkpoint row as the last commit.
pub(crate) fn commit(run: String, page: i64, ack: &str) -> Result<Commit, Error> {
    let page = u64::try_from(page)
        .map_err(|_| Error::permanent(format!("stored page number {page} is negative")))?;
    let StoredAck { ack, earlier } = serde_json::from_str(ack)
        .map_err(|e| Error::permanent(format!("stored acknowledgement unreadable: {e}")))?;
    Ok(Commit {
        run,
        page,
        ack,
        earlier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(n: u64) -> WriteAck {
        WriteAck {
            inserted: n,
            updated: n + 1,
            skipped_stale: n % 2,
            ..WriteAck::default()
        }
    }

    #[test]
    fn a_commit_keeps_the_acknowledgements_a_replay_of_its_run_needs() -> Result<(), Error> {
        let mut last: Option<Commit> = None;
        for page in 1..=REPLAYABLE + 3 {
            last = Some(Commit::after(last.as_ref(), "r1", page, ack(page)));
        }
        let last = last.ok_or_else(|| Error::permanent("no commit"))?;
        assert_eq!(last.earlier.0.len() as u64, REPLAYABLE - 1);
        // Stored as text and read back (the SQL stores' round trip).
        let read = commit(
            "r1".into(),
            (REPLAYABLE + 3).cast_signed(),
            &last.ack_text()?,
        )?;
        assert_eq!(read, last);
        for page in 4..=REPLAYABLE + 3 {
            let replayed = read.replayed("r1", page);
            assert_eq!(
                replayed,
                Some(WriteAck {
                    replayed: true,
                    ..ack(page)
                }),
                "{page}"
            );
        }
        // Older than what is kept: replayed, counting nothing; a page not yet written, or
        // another run's, is no replay.
        let old = WriteAck {
            replayed: true,
            ..WriteAck::default()
        };
        assert_eq!(read.replayed("r1", 3), Some(old));
        assert_eq!(read.replayed("r1", REPLAYABLE + 4), None);
        assert_eq!(read.replayed("r2", 5), None);
        // Another run's commit starts its own list.
        assert!(Commit::after(Some(&read), "r2", 1, ack(1))
            .earlier
            .is_empty());
        Ok(())
    }

    #[test]
    fn an_acknowledgement_stored_by_an_older_version_is_read() -> Result<(), Error> {
        let text = r#"{"inserted":3,"updated":1,"unchanged":0,"skipped_stale":0,"dead_lettered":0,"deleted":0,"replayed":false}"#;
        let read = commit("r1".into(), 7, text)?;
        assert_eq!((read.page, read.ack.inserted, read.ack.updated), (7, 3, 1));
        assert!(read.earlier.is_empty());
        // And written back in the same shape (no `earlier` when there is none).
        assert_eq!(read.ack_text()?, text);
        Ok(())
    }
}
