//! The dead-letter store, in the state directory: records that failed validation or that a
//! destination refused one by one, with their stream, run, page, key and reason. A bad
//! record never stalls a sync.
//!
//! One file per `(run, page)`, `dead_letters/<sync>/<stream>/<run>-<page>.jsonl`, written
//! atomically before the destination commits the page: replaying the page writes the same
//! file again, so a crash never duplicates a dead letter.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use waymark_engine::destination;

/// One dead-lettered record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The stream.
    pub stream: String,
    /// The run that read it.
    pub run_id: String,
    /// The page it came in.
    pub page: u64,
    /// Its key, when it has one.
    pub key: Option<String>,
    /// Why it was refused.
    pub reason: String,
    /// The record as received.
    pub record: String,
}

/// The dead letters of one stream.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    dir: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> destination::Error + '_ {
    move |e| destination::Error::permanent(format!("dead-letter store {}: {e}", path.display()))
}

impl DeadLetters {
    /// The store of `sync`/`stream` under the state directory `root`.
    pub fn new(root: &Path, sync: &str, stream: &str) -> Self {
        DeadLetters {
            dir: root.join("dead_letters").join(sync).join(stream),
        }
    }

    /// The folder of the store's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a page's dead letters (nothing when there are none).
    pub fn put(
        &self,
        run: &str,
        page: u64,
        letters: &[DeadLetter],
    ) -> Result<(), destination::Error> {
        if letters.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let file = self.dir.join(format!("{run}-{page:010}.jsonl"));
        let tmp = file.with_extension("tmp");
        let mut out = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        for letter in letters {
            let line = serde_json::to_string(letter)
                .map_err(|e| destination::Error::permanent(format!("dead letter encoding: {e}")))?;
            writeln!(out, "{line}").map_err(io(&tmp))?;
        }
        out.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &file).map_err(io(&file))?;
        // The rename is durable only once the directory is: the page commits after this.
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.dir))
    }

    /// The files of the store, oldest run first.
    pub fn files(&self) -> Result<Vec<PathBuf>, destination::Error> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        files.sort();
        Ok(files)
    }

    /// Removes files of the store (after their letters were retried or dropped).
    pub fn remove(&self, files: &[PathBuf]) -> Result<(), destination::Error> {
        for file in files {
            std::fs::remove_file(file).map_err(io(file))?;
        }
        Ok(())
    }

    /// Appends a line to the store's audit log (`audit.log`): what was done to it and why.
    pub fn audit(&self, line: &str) -> Result<(), destination::Error> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join("audit.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        writeln!(f, "{line}").map_err(io(&path))?;
        f.sync_all().map_err(io(&path))
    }

    /// The streams with a store under the state directory `root`: `(sync, stream)`.
    pub fn streams(root: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let base = root.join("dead_letters");
        let names = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        };
        for sync in names(&base) {
            for stream in names(&base.join(&sync)) {
                out.push((sync.clone(), stream));
            }
        }
        out
    }

    /// Every dead letter of the stream, oldest run first.
    pub fn list(&self) -> Result<Vec<DeadLetter>, destination::Error> {
        self.read(&self.files()?)
    }

    /// The dead letters in `files`.
    pub fn read(&self, files: &[PathBuf]) -> Result<Vec<DeadLetter>, destination::Error> {
        let mut all = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(io(file))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                all.push(serde_json::from_str(line).map_err(|e| {
                    destination::Error::permanent(format!(
                        "{}: unreadable dead letter: {e}",
                        file.display()
                    ))
                })?);
            }
        }
        Ok(all)
    }
}
