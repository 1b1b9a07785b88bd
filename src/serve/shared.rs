//! What the local API's and the web view's handlers share: the held state directory, the
//! serve loop's ears ([`Ask`], the changing commands), the token and the forms' CSRF token.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use waymark_engine::{StateDir, Timestamp};

use super::metrics::Metrics;
use super::Key;
use crate::cli::attach::Change;

/// What the handlers ask of the serve loop.
pub enum Ask {
    /// Run this stream now; the answer says whether it was.
    RunNow(Key, oneshot::Sender<RunNow>),
    /// Each scheduled stream, when it is next due and whether its run is going.
    Plan(oneshot::Sender<Vec<(Key, Option<Timestamp>, bool)>>),
}

/// The loop's answer to a run-now request.
pub enum RunNow {
    /// Started now, or as soon as a slot is free.
    Accepted,
    /// Its run is going.
    Running,
    /// Not a stream serve knows.
    Unknown,
}

/// What the API's and the web view's handlers share.
#[derive(Clone)]
pub struct Shared {
    pub dir: Arc<StateDir>,
    pub metrics: Arc<Metrics>,
    pub asks: mpsc::UnboundedSender<Ask>,
    pub token: Option<Arc<str>>,
    /// This process's token for the web view's forms (a POST without it is refused).
    pub csrf: Arc<str>,
    /// Where changing commands go (serve's loop holds their stream meanwhile).
    pub changes: Option<mpsc::UnboundedSender<Change>>,
    /// Each loaded sync's workflow file.
    pub workflows: Option<watch::Receiver<BTreeMap<String, PathBuf>>>,
    /// In a cluster: what makes `runs` and `status` read the coordinator (the pages show
    /// every worker's runs).
    pub cluster: Option<Arc<[String]>>,
}

impl Shared {
    /// What the handlers share: the held state directory, the metrics, the loop's asks,
    /// the bearer token required (if any).
    pub fn new(
        dir: StateDir,
        metrics: Arc<Metrics>,
        asks: mpsc::UnboundedSender<Ask>,
        token: Option<String>,
    ) -> Self {
        Shared {
            dir: Arc::new(dir),
            metrics,
            asks,
            token: token.map(Arc::from),
            csrf: Arc::from(csrf_token()),
            changes: None,
            workflows: None,
            cluster: None,
        }
    }

    /// The workflow file of `sync`, if serve loads it.
    pub fn workflow_of(&self, sync: &str) -> Option<PathBuf> {
        self.workflows.as_ref()?.borrow().get(sync).cloned()
    }

    /// The arguments of the commands the pages read: `args`, and in a cluster what makes
    /// `runs` and `status` read the coordinator.
    pub fn reading(&self, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let observes = matches!(args.first(), Some(&"runs" | &"status"));
        if let Some(cluster) = self.cluster.as_ref().filter(|_| observes) {
            all.extend(cluster.iter().cloned());
        }
        all
    }

    /// With the changing commands' channel and the workflow files.
    pub fn with_changes(
        self,
        changes: mpsc::UnboundedSender<Change>,
        workflows: watch::Receiver<BTreeMap<String, PathBuf>>,
    ) -> Self {
        Shared {
            changes: Some(changes),
            workflows: Some(workflows),
            ..self
        }
    }
}

/// The cookie the web view's login sets: the API token, for the pages.
pub const TOKEN_COOKIE: &str = "waymark_token";

/// A random token (128 bits, hex).
fn csrf_token() -> String {
    let mut bytes = [0u8; 16];
    // The system's randomness; should it fail, a time-based id is still unguessable enough
    // for a same-site form token beside SameSite=Strict cookies.
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => uuid::Uuid::now_v7().simple().to_string(),
    }
}

/// Compares in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
