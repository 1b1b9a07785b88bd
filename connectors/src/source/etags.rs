//! Conditional requests (`conditional = true`): the ETag of every page a completed run
//! read, kept in the state directory (`etags/<sync>/<stream>.json`) by a hash of the request
//! (method, URL, body: never the request itself, which may carry a key), with the page's
//! next cursor. The next run sends `If-None-Match` with it; a `304 Not Modified` is that page
//! again, whose records that run wrote, so it is skipped and its next cursor followed.
//!
//! Only a completed run's ETags are kept (all its pages were written): an ETag of a page
//! whose records may not have reached the destination would skip them for good. The file
//! holds the ETags of the last completed run only (a window's requests differ from run to
//! run; they do not pile up).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A page's ETag and the cursor of the page after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The `ETag` the API answered with.
    pub etag: String,
    /// The next page's cursor that answer gave (`None`: it was the last page).
    pub next: Option<String>,
}

/// The ETags a stream's runs send and the ones this run saw.
#[derive(Debug, Default)]
pub struct Etags {
    file: Option<PathBuf>,
    /// Of the last completed run.
    known: HashMap<String, Entry>,
    /// Of this run (answered with an ETag, or 304 on a known one).
    seen: HashMap<String, Entry>,
}

impl Etags {
    /// The stream's ETags kept under `root` (none kept: an unreadable file is ignored,
    /// which only costs full answers).
    pub fn open(root: Option<&Path>, sync: &str, stream: &str) -> Self {
        let file = root.map(|root| {
            root.join("etags")
                .join(crate::http::path_segment(sync))
                .join(format!("{}.json", crate::http::path_segment(stream)))
        });
        let known = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Etags {
            file,
            known,
            seen: HashMap::new(),
        }
    }

    /// The key of a request: a hash of its method, URL and body.
    pub fn key(request: &reqwest::Request) -> String {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(request.method().as_str().as_bytes());
        context.update(b" ");
        context.update(request.url().as_str().as_bytes());
        context.update(b"\n");
        if let Some(body) = request.body().and_then(|b| b.as_bytes()) {
            context.update(body);
        }
        context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The ETag a completed run got for this request.
    pub fn known(&self, key: &str) -> Option<&Entry> {
        self.known.get(key)
    }

    /// This run got `entry` for the request (a full answer, or a 304 on a known one).
    pub fn saw(&mut self, key: String, entry: Entry) {
        self.seen.insert(key, entry);
    }

    /// Keeps this run's ETags for the next run: call only once the run completed.
    pub fn keep(&mut self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_vec(&self.seen).map_err(std::io::Error::other)?;
        let temporary = file.with_extension("json.tmp");
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, file)?;
        self.known = std::mem::take(&mut self.seen);
        Ok(())
    }
}
