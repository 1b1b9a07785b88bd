//! What a run's journal, staged pages and destination writes must survive.

use serde::{Deserialize, Serialize};

/// What an acknowledged step survives.
///
/// Both keep the rules of a run — the journal written before the destination, pages written
/// and committed in order, the checkpoint never ahead of a write — and differ only in
/// whether each step waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Every step is on disk before the next begins (`fdatasync` of the run's log and
    /// staged pages — one each a step, which writes a group of pages — and each of the
    /// destination's commits synced): survives a power cut.
    #[default]
    PowerLoss,
    /// Every step is handed to the kernel before the next begins, without waiting for the
    /// disk: survives the process being killed or crashing, not a power cut or a crash of
    /// the machine. A run started after such a cut trusts its journal only up to the
    /// destination's own checkpoint.
    Process,
}

impl Durability {
    /// True when each step waits for the disk.
    pub fn syncs(self) -> bool {
        self == Durability::PowerLoss
    }

    /// The name a workflow file uses.
    pub fn name(self) -> &'static str {
        match self {
            Durability::PowerLoss => "power-loss",
            Durability::Process => "process",
        }
    }
}
