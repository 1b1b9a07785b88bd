//! One invocation's shared parts (the API connection, settings, stop flag, progress) and
//! driving one run with them.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use waymark_connectors::config::StreamSection;
use waymark_connectors::webhook::inbox::Inbox;
use waymark_connectors::{sink, AnyDestination, Api, HttpSource, Workflow};
use waymark_engine::{driver, Clock, Event, RunState, Settings, Source, StateDir, SystemClock};

use crate::cli::context::Budget;
use crate::cli::progress::{print_summary, Progress};

fn settings(workflow: &Workflow, budget: &Budget) -> Settings {
    Settings {
        retry: workflow.retry_policy(),
        max_pages: budget.max_pages,
        max_duration: budget.max_duration,
        jitter_seed: SystemClock.now().0 ^ u64::from(std::process::id()),
    }
}

/// The connection to the workflow's API, shared by its streams (credentials are read
/// here: a missing variable stops the command before any request).
pub(crate) fn api(dir: &StateDir, workflow: &Workflow) -> anyhow::Result<Arc<Api>> {
    Ok(Api::new(workflow, Some(dir.root()), Arc::new(SystemClock))?)
}

/// What every run of one invocation shares.
pub(crate) struct Invocation<'a> {
    pub(crate) api: Arc<Api>,
    pub(crate) settings: Settings,
    pub(crate) stop: &'a AtomicBool,
    /// Summaries as JSON.
    json: bool,
    /// Print each run's summary (a command that reports on the run itself turns it off).
    pub(crate) summaries: bool,
    /// Told of every journaled step (`serve` counts them for its metrics).
    pub(crate) observer: Option<Observer>,
    /// The webhook inbox, when this process holds it open (`serve`).
    pub(crate) inbox: Option<Arc<Inbox>>,
    /// In a cluster: the lease the stream's partition is held under.
    pub(crate) lease: Option<waymark_engine::Lease>,
    /// The runs' clock (`waymark test` and `record` pin it to a fixture's time).
    pub(crate) clock: Arc<dyn Clock>,
}

/// Sees each journaled step of a run: the state after it, and the step.
pub(crate) type Observer = Arc<dyn Fn(&RunState, &Event) + Send + Sync>;

impl<'a> Invocation<'a> {
    pub(crate) fn new(
        dir: &StateDir,
        workflow: &Workflow,
        budget: &Budget,
        stop: &'a AtomicBool,
    ) -> anyhow::Result<Self> {
        Ok(Self::with_api(api(dir, workflow)?, workflow, budget, stop))
    }

    /// An invocation over an existing connection: `serve`'s runs of one source share its
    /// connection, so its rate budget.
    pub(crate) fn with_api(
        api: Arc<Api>,
        workflow: &Workflow,
        budget: &Budget,
        stop: &'a AtomicBool,
    ) -> Self {
        Invocation {
            api,
            settings: settings(workflow, budget),
            stop,
            json: budget.json,
            summaries: true,
            observer: None,
            inbox: None,
            lease: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// This invocation with its runs on `clock` (its API should be on it too) and jitter
    /// seeded by the clock's time, so runs replayed at the same time wait the same waits.
    pub(crate) fn on_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.settings.jitter_seed = clock.now().0;
        self.clock = clock;
        self
    }

    /// The source of `stream`, through this invocation's API connection; a child stream
    /// reads its parents from the workflow's destination.
    pub(crate) async fn source(
        &self,
        workflow: &Workflow,
        stream: &StreamSection,
    ) -> anyhow::Result<HttpSource> {
        let parents = sink::parents(workflow, stream).await?;
        Ok(HttpSource::new(
            workflow,
            stream,
            self.api.clone(),
            parents,
        )?)
    }
}

/// Drives one opened run to its end (or pause/failure) with `source` (the stream's API, or
/// a repair set) and prints its summary line.
pub(crate) async fn drive(
    dir: &mut StateDir,
    run: &Invocation<'_>,
    source: &mut impl Source,
    destination: &mut AnyDestination,
    state: RunState,
) -> anyhow::Result<RunState> {
    let (settings, stop, json) = (&run.settings, run.stop, run.json);
    let summary = run.summaries;
    let observer = run.observer.clone();
    let clock = run.clock.clone();
    let (sync, stream) = (state.started.sync.clone(), state.started.stream.clone());
    let run = state.run_id();
    let verb = if state.counts.resumes > 0 || state.last_seq > 1 {
        "resumed"
    } else {
        "started"
    };
    tracing::info!(
        "{sync}/{stream}: run {run} {verb}, window {}, start {}",
        state.window(),
        state
            .fetch_cursor()
            .map_or("at the first page", |c| c.as_str())
    );
    let began = Instant::now();
    let mut progress = Progress::new(&stream, state.counts.records_committed);
    let mut observe = |state: &RunState, event: &Event| {
        progress.observe(state, event);
        if let Some(observer) = &observer {
            observer(state, event);
        }
    };
    let (journal, staging) = dir.parts();
    let outcome = driver::drive(
        journal,
        staging,
        source,
        destination,
        &*clock,
        settings,
        stop,
        state,
        &mut observe,
    )
    .await;
    drop(progress);
    let state = outcome.with_context(|| format!("run {run} of {sync}/{stream}"))?;
    if summary {
        print_summary(&state, began.elapsed(), json);
    }
    Ok(state)
}
