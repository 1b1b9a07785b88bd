//! Partitions of a run's window read at once (`concurrency`): the window cut into
//! `window.step` slices, up to N of them open, each read by its own source (for the HTTP
//! source, a copy with its own cursor and loop checks) in a task of its own, through the
//! shared API connection (so under one rate budget). Each open partition fetches its next
//! page ahead while the driver writes; pages reach the driver one at a time, the lowest
//! ready partition first.
//!
//! The run's cursor is a [`Position`]: every open partition's cursor and the next one to
//! open. It moves with each page the driver commits, so a resumed run continues every
//! partition exactly where its last committed page left it; a partition that ends opens
//! the next, and the run ends with the last.

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use waymark_engine::source::{self, Page, PageRequest, Source};
use waymark_engine::{Timestamp, Window};

use super::page::fatal;

/// Where a partitioned run stands: the partitions opened so far and each open one's cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// The next partition to open.
    next: u64,
    /// The open partitions in index order, each with the cursor of its next page (`None`:
    /// its first).
    open: Vec<(u64, Option<String>)>,
}

/// One open partition.
struct Open<S> {
    index: u64,
    /// The cursor of its next page.
    cursor: Option<String>,
    /// The number of its next page (its own count, for its loop checks).
    page: u64,
    /// Its source while no request is under way (else the task holds it)...
    idle: Option<Box<S>>,
    /// ...and the request under way, which gives the source back.
    task: Option<JoinHandle<Fetched<S>>>,
}

type Fetched<S> = (Box<S>, Result<Page, source::Error>);

/// A source reading up to `concurrency` partitions of the run's window at once.
pub(super) struct Partitioned<S> {
    /// Makes each partition's source.
    make: Box<dyn Fn() -> S + Send + Sync>,
    step_ms: u64,
    concurrency: usize,
    /// The run's window; with `next` and `open`, the position the last page returned
    /// moved to (or a resumed run started from).
    window: Option<Window>,
    next: u64,
    open: Vec<Open<S>>,
}

impl<S: Source + 'static> Partitioned<S> {
    pub(super) fn new(
        make: impl Fn() -> S + Send + Sync + 'static,
        step_ms: u64,
        concurrency: usize,
    ) -> Self {
        Partitioned {
            make: Box::new(make),
            step_ms: step_ms.max(1),
            concurrency: concurrency.max(1),
            window: None,
            next: 0,
            open: Vec::new(),
        }
    }

    /// How many partitions `window` has: one without a start.
    fn count(&self, window: Window) -> u64 {
        match window.start {
            Some(start) if window.end.0 > start.0 => {
                (window.end.0 - start.0).div_ceil(self.step_ms)
            }
            _ => 1,
        }
    }

    /// The position a request's cursor names, with free slots filled by the next
    /// partitions.
    fn position(&self, request: &PageRequest<'_>) -> Result<Position, source::Error> {
        let mut position = match request.cursor {
            None => Position::default(),
            Some(c) => serde_json::from_str::<Position>(c).map_err(|e| {
                fatal(format!(
                    "the journaled cursor `{c}` is not a partitioned run's position ({e}); \
                     was `concurrency` set while this run was unfinished?"
                ))
            })?,
        };
        let count = self.count(request.window);
        let ordered = position.open.windows(2).all(|w| w[0].0 < w[1].0);
        if !ordered || position.next > count || position.open.iter().any(|(k, _)| *k >= count) {
            return Err(fatal(format!(
                "the journaled position {:?} does not fit the run's {count} partitions",
                request.cursor.unwrap_or_default()
            )));
        }
        while position.open.len() < self.concurrency && position.next < count {
            position.open.push((position.next, None));
            position.next += 1;
        }
        Ok(position)
    }

    /// Starts over at `position`: requests under way are dropped.
    fn reset(&mut self, window: Window, position: Position) {
        self.abort();
        self.open = position
            .open
            .iter()
            .map(|(index, cursor)| self.opened(*index, cursor.clone()))
            .collect();
        self.window = Some(window);
        self.next = position.next;
    }

    /// Where the open partitions stand.
    fn position_now(&self) -> Position {
        Position {
            next: self.next,
            open: self
                .open
                .iter()
                .map(|o| (o.index, o.cursor.clone()))
                .collect(),
        }
    }

    fn opened(&self, index: u64, cursor: Option<String>) -> Open<S> {
        Open {
            index,
            cursor,
            page: 1,
            idle: Some(Box::new((self.make)())),
            task: None,
        }
    }

    /// Sends the next request of every open partition that has none under way.
    fn fetch_ahead(&mut self, window: Window) {
        let step_ms = self.step_ms;
        for open in &mut self.open {
            let Some(mut source) = open.idle.take() else {
                continue;
            };
            let request = (
                open.page,
                open.cursor.clone(),
                partition(window, step_ms, open.index),
            );
            open.task = Some(tokio::spawn(async move {
                let (page, cursor, window) = request;
                let request = PageRequest {
                    page,
                    cursor: cursor.as_deref(),
                    window,
                };
                let page = source.fetch(request).await;
                (source, page)
            }));
        }
    }
}

impl<S> Partitioned<S> {
    fn abort(&mut self) {
        for open in self.open.drain(..) {
            if let Some(task) = open.task {
                task.abort();
            }
        }
    }
}

impl<S: Source + 'static> Source for Partitioned<S> {
    async fn fetch(&mut self, request: PageRequest<'_>) -> Result<Page, source::Error> {
        let window = request.window;
        let position = self.position(&request)?;
        // Anything but the position the last page moved to (a resumed run, a page fetched
        // again) starts over from the position asked for.
        if self.window != Some(window) || self.position_now() != position {
            self.reset(window, position);
        }
        if self.open.is_empty() {
            return Ok(Page::default());
        }
        self.fetch_ahead(window);
        // The lowest open partition whose page is in (`select_all` polls in order).
        let tasks = self.open.iter_mut().filter_map(|o| o.task.as_mut());
        let (joined, i, _) = futures_util::future::select_all(tasks).await;
        let count = self.count(window);
        let open = &mut self.open[i];
        open.task = None;
        let what = format!(
            "partition {} of {count}, window {}",
            open.index + 1,
            partition(window, self.step_ms, open.index)
        );
        let (source, page) = match joined {
            Ok(fetched) => fetched,
            Err(e) => {
                open.idle = Some(Box::new((self.make)()));
                return Err(fatal(format!("{what}: its request stopped: {e}")));
            }
        };
        open.idle = Some(source);
        let mut page = page.map_err(|mut e| {
            e.message = format!("{what}: {}", e.message);
            e
        })?;
        open.page += 1;
        match page.next_cursor.take() {
            Some(cursor) => open.cursor = Some(cursor),
            None => drop(self.open.remove(i)),
        }
        while self.open.len() < self.concurrency && self.next < count {
            self.open.push(self.opened(self.next, None));
            self.next += 1;
        }
        if !self.open.is_empty() {
            let position = serde_json::to_string(&self.position_now())
                .map_err(|e| fatal(format!("writing the run's position: {e}")))?;
            page.next_cursor = Some(position);
        }
        self.fetch_ahead(window);
        Ok(page)
    }
}

impl<S> Drop for Partitioned<S> {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Partition `index` of `window` cut into `step_ms` slices (the whole window without a
/// start).
fn partition(window: Window, step_ms: u64, index: u64) -> Window {
    let Some(start) = window.start else {
        return window;
    };
    let from = start
        .0
        .saturating_add(index.saturating_mul(step_ms))
        .min(window.end.0);
    Window {
        start: Some(Timestamp(from)),
        end: Timestamp(from.saturating_add(step_ms).min(window.end.0)),
    }
}
