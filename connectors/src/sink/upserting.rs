//! The destination protocol, written once for every [`Store`]: recognise a replayed batch →
//! look up what is stored → plan (pure) → note dead letters and the audit trail → apply →
//! store the checkpoint → commit. The order is the guarantee: side records are durable
//! before the page commits (a replay writes the same again), and the checkpoint commits in
//! the same transaction as the batch it covers.

use std::path::Path;
use std::sync::Arc;

use waymark_engine::destination::{self, Batch, Destination, Preparer};
use waymark_engine::{Checkpoint, Lease, WriteAck};

use super::plan::{plan, Binding, Identified, Plan};
use super::store::{Commit, Store};
use crate::config::{parse_scope, Workflow};
use crate::state::audit::Audit;
use crate::state::dead_letters::DeadLetters;

/// Where a page's side records go before it commits: its dead letters and what became of
/// each record (the audit index behind `waymark trace`), both in the state directory.
#[derive(Clone, Debug)]
pub struct Notes {
    dead_letters: DeadLetters,
    audit: Audit,
}

impl Notes {
    /// The notes of `binding`'s stream (of any of its checkpoint scopes) of `workflow`,
    /// under the state directory `state_dir`.
    pub fn new(state_dir: &Path, workflow: &Workflow, binding: &Binding) -> Self {
        let (stream, _) = parse_scope(&binding.stream);
        Notes {
            dead_letters: DeadLetters::new(state_dir, workflow.name(), stream),
            audit: match workflow.audit_keep().is_zero() {
                true => Audit::disabled(state_dir),
                false => Audit::new(state_dir),
            },
        }
    }

    /// Notes kept under `state_dir` for `binding`'s sync and scope, the audit index on
    /// (the unit tests).
    #[cfg(test)]
    pub(crate) fn in_dir(state_dir: &Path, binding: &Binding) -> Self {
        Notes {
            dead_letters: DeadLetters::new(state_dir, &binding.sync, &binding.stream),
            audit: Audit::new(state_dir),
        }
    }

    /// Notes a page's dead letters and what became of each record, before the page commits
    /// (a replay of the page writes the same again).
    pub fn note(
        &self,
        binding: &Binding,
        run: &str,
        page: u64,
        at: waymark_engine::Timestamp,
        plan: &Plan<'_>,
    ) -> Result<(), destination::Error> {
        self.dead_letters.put(run, page, &plan.dead)?;
        self.audit
            .record(&binding.sync, &binding.stream, run, page, at, &plan.seen)
    }
}

/// A destination made of a [`Store`] and the stream's rules: implements the engine's
/// [`Destination`] once for SQLite, PostgreSQL and JSONL.
pub struct Upserting<S> {
    /// `None` only while a blocking write holds it on its thread (or after that thread
    /// died).
    inner: Option<Inner<S>>,
    prepare: Preparer<Arc<Identified>>,
}

/// What a write needs, moved to a blocking thread as one piece for a blocking store.
struct Inner<S> {
    store: S,
    binding: Binding,
    notes: Notes,
}

fn lost() -> destination::Error {
    destination::Error::permanent("the destination was lost with a failed write")
}

impl<S: Store> Upserting<S> {
    /// The destination writing to `store` by `binding`'s rules, noting side records in
    /// `notes`.
    pub fn new(store: S, binding: Binding, notes: Notes) -> Self {
        Upserting {
            prepare: binding.preparer(),
            inner: Some(Inner {
                store,
                binding,
                notes,
            }),
        }
    }

    /// The store (for a reconciliation's scan).
    pub fn store(&mut self) -> Result<&mut S, destination::Error> {
        self.inner.as_mut().map(|i| &mut i.store).ok_or_else(lost)
    }
}

impl<S: Store> Inner<S> {
    /// Writes the batches one after the other, up to the first failure.
    async fn write_all<'b>(
        &mut self,
        batches: impl Iterator<Item = Batch<'b, Arc<Identified>>>,
    ) -> Vec<Result<WriteAck, destination::Error>> {
        let mut results = Vec::new();
        for batch in batches {
            let written = self.write(batch).await;
            let failed = written.is_err();
            results.push(written);
            if failed {
                break;
            }
        }
        results
    }

    async fn write(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        self.store.begin().await?;
        let written = self.write_in_transaction(batch).await;
        if written.is_err() {
            self.store.rollback().await;
        }
        written
    }

    async fn write_in_transaction(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        let run = batch.run_id.to_string();
        // Committed before a crash, before our journal heard of it: the stored
        // acknowledgement, and nothing written again.
        let last = self.store.last_commit().await?;
        if let Some(ack) = last.as_ref().and_then(|l| l.replayed(&run, batch.page)) {
            self.store.rollback().await;
            return Ok(ack);
        }
        let records: &Identified = batch.records;
        let mut stored = self.store.stored(&records.keys()).await?;
        let plan = plan(&self.binding, &run, batch.page, records, |key| {
            Ok::<_, destination::Error>(stored.remove(key))
        })?;
        self.notes
            .note(&self.binding, &run, batch.page, batch.checkpoint.at, &plan)?;
        self.store.apply(&run, batch.page, &plan).await?;
        let commit = Commit::after(last.as_ref(), &run, batch.page, plan.ack);
        self.store.put_checkpoint(batch.checkpoint, &commit).await?;
        self.store.commit().await?;
        Ok(plan.ack)
    }
}

impl<S: Store> Destination for Upserting<S> {
    type Page = Arc<Identified>;

    fn preparer(&self) -> Preparer<Arc<Identified>> {
        self.prepare.clone()
    }

    async fn write(
        &mut self,
        batch: Batch<'_, Arc<Identified>>,
    ) -> Result<WriteAck, destination::Error> {
        let written = self.write_pages(&[batch]).await;
        written.into_iter().next().unwrap_or_else(|| Err(lost()))
    }

    /// For a blocking store, the pages are written on one blocking thread, one transaction
    /// each, which shares their records.
    async fn write_pages(
        &mut self,
        batches: &[Batch<'_, Arc<Identified>>],
    ) -> Vec<Result<WriteAck, destination::Error>> {
        if !S::BLOCKING {
            return match self.inner.as_mut() {
                Some(inner) => inner.write_all(batches.iter().copied()).await,
                None => vec![Err(lost())],
            };
        }
        let Some(mut inner) = self.inner.take() else {
            return vec![Err(lost())];
        };
        let owned: Vec<_> = batches
            .iter()
            .map(|b| (b.run_id, b.page, b.records.clone(), b.checkpoint.clone()))
            .collect();
        let runtime = tokio::runtime::Handle::current();
        let done = tokio::task::spawn_blocking(move || {
            let batches = owned
                .iter()
                .map(|(run_id, page, records, checkpoint)| Batch {
                    run_id: *run_id,
                    page: *page,
                    records,
                    checkpoint,
                });
            let results = runtime.block_on(inner.write_all(batches));
            (inner, results)
        })
        .await;
        match done {
            Ok((inner, results)) => {
                self.inner = Some(inner);
                results
            }
            Err(e) => vec![Err(destination::Error::permanent(format!(
                "the destination's write failed: {e}"
            )))],
        }
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, destination::Error> {
        self.store()?.checkpoint().await
    }

    async fn fence(&mut self, lease: &Lease) -> Result<(), destination::Error> {
        self.store()?.fence(lease).await
    }
}
