//! The JSONL destination: one directory per table, one file per written page.
//!
//! A page becomes `<dir>/<table>/<seq>-<run>-<page>.jsonl` (`seq` orders the files by
//! commit, whatever stream or run wrote them): a header line (the stream's scope, its
//! checkpoint and the write acknowledgement) then one line per change
//! (`{"key","version","deleted_at","record"}`), written to a temporary file, synced and
//! renamed. The rename is the commit: batch and checkpoint land together, a replay of the
//! page finds its file and returns the stored acknowledgement, and a crash between write
//! and commit never leaves a duplicate line. Versions are checked against an index of the
//! newest version per key, rebuilt from the files when the destination opens.
//! [`compact`] merges the files into `compacted.jsonl`, the newest line per key.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use waymark_engine::destination;
use waymark_engine::{Checkpoint, WriteAck};

use super::plan::{Binding, Op, Plan, Stored};
use super::store::{Commit, Earlier, Store};
use super::upserting::Upserting;

/// A page file's first line.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    stream: String,
    checkpoint: Checkpoint,
    ack: WriteAck,
    /// The run's earlier pages' acknowledgements (absent from older versions' files).
    #[serde(default, skip_serializing_if = "Earlier::is_empty")]
    earlier: Earlier,
}

/// One change.
#[derive(Debug, Serialize, Deserialize)]
struct Line<'a> {
    key: String,
    version: Option<String>,
    deleted_at: Option<String>,
    #[serde(borrow)]
    record: Option<&'a RawValue>,
}

/// One table of a JSONL directory, for one checkpoint scope.
pub struct JsonlStore {
    dir: PathBuf,
    /// The checkpoint scope (a page file's header names it).
    scope: String,
    /// The newest state of every key.
    index: HashMap<String, Stored>,
    /// The sequence number of the next page file.
    next: u64,
    /// The scope's newest page file: its run, page and acknowledgement.
    last: Option<Commit>,
    /// The page file being written: its text, header first (the transaction).
    pending: Option<Pending>,
}

/// A page file before its rename.
struct Pending {
    lines: String,
    header: Option<Header>,
    run: String,
    page: u64,
}

/// The JSONL destination.
pub type JsonlDestination = Upserting<JsonlStore>;

/// The sequence number at the start of a page file's name.
fn seq(path: &Path) -> u64 {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> destination::Error + '_ {
    move |e| destination::Error::permanent(format!("{}: {e}", path.display()))
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> destination::Error {
    destination::Error::permanent(format!("{}: unreadable line: {e}", path.display()))
}

/// The page files of a table directory in commit order (their names start with a
/// sequence number), and the compacted file if there is one.
fn files(dir: &Path) -> Result<(Option<PathBuf>, Vec<PathBuf>), destination::Error> {
    let mut pages: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "jsonl")
                    && p.file_name().is_some_and(|n| n != "compacted.jsonl")
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(dir)(e)),
    };
    pages.sort();
    let compacted = dir.join("compacted.jsonl");
    Ok((compacted.is_file().then_some(compacted), pages))
}

/// Reads a JSONL file: its header (page files) and each line, passed to `each`.
fn read(
    path: &Path,
    header: bool,
    mut each: impl FnMut(Line<'_>),
) -> Result<Option<Header>, destination::Error> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut lines = BufReader::new(file).lines();
    let head = match header {
        true => match lines.next() {
            Some(line) => {
                Some(serde_json::from_str(&line.map_err(io(path))?).map_err(|e| corrupt(path, e))?)
            }
            None => return Err(corrupt(path, "no header")),
        },
        false => None,
    };
    for line in lines {
        let line = line.map_err(io(path))?;
        each(serde_json::from_str(&line).map_err(|e| corrupt(path, e))?);
    }
    Ok(head)
}

fn stored(line: &Line<'_>) -> Stored {
    Stored {
        version: line.version.clone(),
        deleted: line.deleted_at.is_some() || line.record.is_none(),
        record: line.record.map(|r| r.get().to_string()),
    }
}

impl JsonlStore {
    /// Opens (creating) `root/<table>/` and indexes what it holds.
    pub fn open(root: &Path, binding: &Binding) -> Result<Self, destination::Error> {
        let dir = root.join(&binding.table);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut index = HashMap::new();
        let (compacted, pages) = files(&dir)?;
        let mut add = |line: Line<'_>| {
            index.insert(line.key.clone(), stored(&line));
        };
        if let Some(c) = compacted {
            read(&c, false, &mut add)?;
        }
        let mut last = None;
        for page in &pages {
            if let Some(header) = read(page, true, &mut add)? {
                if header.stream == binding.stream {
                    last = Some(Commit {
                        run: header.checkpoint.run_id.to_string(),
                        page: header.checkpoint.page,
                        ack: header.ack,
                        earlier: header.earlier,
                    });
                }
            }
        }
        let next = pages.last().map_or(1, |p| seq(p) + 1);
        Ok(JsonlStore {
            dir,
            scope: binding.stream.clone(),
            index,
            next,
            last,
            pending: None,
        })
    }

    /// Every key of the table and its newest state.
    pub fn scan(
        &self,
        each: &mut dyn FnMut(String, Stored) -> Result<(), destination::Error>,
    ) -> Result<(), destination::Error> {
        for (key, stored) in &self.index {
            each(key.clone(), stored.clone())?;
        }
        Ok(())
    }

    /// The checkpoint of the newest page file of this stream's scope.
    fn stored_checkpoint(&self) -> Result<Option<Checkpoint>, destination::Error> {
        let (_, pages) = files(&self.dir)?;
        for page in pages.iter().rev() {
            let file = std::fs::File::open(page).map_err(io(page))?;
            let mut first = String::new();
            BufReader::new(file)
                .read_line(&mut first)
                .map_err(io(page))?;
            let header: Header = serde_json::from_str(&first).map_err(|e| corrupt(page, e))?;
            if header.stream == self.scope {
                return Ok(Some(header.checkpoint));
            }
        }
        let saved = self.dir.join("compacted.checkpoints.json");
        match std::fs::read(&saved) {
            Ok(bytes) => {
                let all: BTreeMap<String, Checkpoint> =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(&saved, e))?;
                Ok(all.get(&self.scope).cloned())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&saved)(e)),
        }
    }
}

impl JsonlStore {
    /// One change as a line of a page file. A soft deletion keeps the last record (for
    /// audit), as the SQL destinations do.
    fn line(&self, op: &Op<'_>) -> Result<String, destination::Error> {
        let kept;
        let line = match op {
            Op::Put {
                key,
                version,
                record,
                ..
            } => Line {
                key: key.to_string(),
                version: version.map(str::to_string),
                deleted_at: None,
                record: Some(serde_json::from_str(record).map_err(encoding)?),
            },
            Op::Tombstone {
                key,
                version,
                record,
            } => {
                kept = self
                    .index
                    .get(*key)
                    .and_then(|s| s.record.clone())
                    .unwrap_or_else(|| record.to_string());
                Line {
                    key: key.to_string(),
                    version: version.map(str::to_string),
                    deleted_at: version.map(str::to_string),
                    record: Some(serde_json::from_str(&kept).map_err(encoding)?),
                }
            }
            Op::Remove { key, version } => Line {
                key: key.to_string(),
                version: version.map(str::to_string),
                deleted_at: version.map(str::to_string),
                record: None,
            },
        };
        serde_json::to_string(&line).map_err(encoding)
    }
}

fn encoding(e: serde_json::Error) -> destination::Error {
    destination::Error::permanent(format!("encoding: {e}"))
}

impl Store for JsonlStore {
    const BLOCKING: bool = true;

    async fn begin(&mut self) -> Result<(), destination::Error> {
        self.pending = None;
        Ok(())
    }

    async fn last_commit(&mut self) -> Result<Option<Commit>, destination::Error> {
        Ok(self.last.clone())
    }

    async fn stored(
        &mut self,
        keys: &[&str],
    ) -> Result<HashMap<String, Stored>, destination::Error> {
        Ok(keys
            .iter()
            .filter_map(|k| Some(((*k).to_string(), self.index.get(*k)?.clone())))
            .collect())
    }

    async fn apply(
        &mut self,
        run: &str,
        page: u64,
        plan: &Plan<'_>,
    ) -> Result<(), destination::Error> {
        let mut lines = String::new();
        for op in &plan.ops {
            lines.push_str(&self.line(op)?);
            lines.push('\n');
        }
        self.pending = Some(Pending {
            lines,
            header: None,
            run: run.to_string(),
            page,
        });
        Ok(())
    }

    async fn put_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
        commit: &Commit,
    ) -> Result<(), destination::Error> {
        let pending = self
            .pending
            .as_mut()
            .ok_or_else(|| destination::Error::permanent("JSONL: a checkpoint without a batch"))?;
        pending.header = Some(Header {
            stream: self.scope.clone(),
            checkpoint: checkpoint.clone(),
            ack: commit.ack,
            earlier: commit.earlier.clone(),
        });
        Ok(())
    }

    /// Writes the page file aside, syncs it and renames it into place: the rename is the
    /// commit.
    async fn commit(&mut self) -> Result<(), destination::Error> {
        let Some(Pending {
            lines,
            header: Some(header),
            run,
            page,
        }) = self.pending.take()
        else {
            return Err(destination::Error::permanent("JSONL: nothing to commit"));
        };
        let file = self
            .dir
            .join(format!("{:020}-{run}-{page:010}.jsonl", self.next));
        let mut out = serde_json::to_string(&header).map_err(encoding)?;
        out.push('\n');
        out.push_str(&lines);
        let tmp = file.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(out.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &file).map_err(io(&file))?;
        sync_dir(&self.dir)?;
        self.next += 1;
        // Durable: the index follows.
        for line in lines.lines() {
            let line: Line<'_> = serde_json::from_str(line).map_err(encoding)?;
            self.index.insert(line.key.clone(), stored(&line));
        }
        self.last = Some(Commit {
            run,
            page,
            ack: header.ack,
            earlier: header.earlier,
        });
        Ok(())
    }

    async fn rollback(&mut self) {
        self.pending = None;
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, destination::Error> {
        self.stored_checkpoint()
    }
}

fn sync_dir(dir: &Path) -> Result<(), destination::Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// What [`compact`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Page files merged (and removed).
    pub files: usize,
    /// Lines read.
    pub lines: usize,
    /// Keys in the compacted file.
    pub keys: usize,
}

/// Merges a table directory's page files into `compacted.jsonl` (the newest line per key,
/// in key order; a hard deletion is a line with `"record": null`) and removes them. The stream checkpoints they
/// held are kept in `compacted.checkpoints.json`. Crash-safe: the new files are renamed into
/// place before any page file is removed, and merging again gives the same result.
pub fn compact(table_dir: &Path) -> Result<Compacted, destination::Error> {
    let (compacted, pages) = files(table_dir)?;
    let mut newest: BTreeMap<String, String> = BTreeMap::new();
    let saved = table_dir.join("compacted.checkpoints.json");
    let mut checkpoints: BTreeMap<String, Checkpoint> = match std::fs::read(&saved) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(&saved, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(io(&saved)(e)),
    };
    let mut lines = 0;
    let mut keep = |line: Line<'_>| {
        lines += 1;
        // Hard deletions stay (`record: null`): they keep an older copy from coming back.
        let text = serde_json::to_string(&line).unwrap_or_default();
        newest.insert(line.key, text);
    };
    if let Some(c) = &compacted {
        read(c, false, &mut keep)?;
    }
    for page in &pages {
        if let Some(h) = read(page, true, &mut keep)? {
            checkpoints.insert(h.stream, h.checkpoint);
        }
    }
    let out = table_dir.join("compacted.jsonl");
    let tmp = table_dir.join("compacted.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    for text in newest.values() {
        writeln!(f, "{text}").map_err(io(&tmp))?;
    }
    f.sync_all().map_err(io(&tmp))?;
    let tmp_cp = table_dir.join("compacted.checkpoints.tmp");
    let cp = serde_json::to_vec(&checkpoints)
        .map_err(|e| destination::Error::permanent(format!("encoding: {e}")))?;
    let mut f = std::fs::File::create(&tmp_cp).map_err(io(&tmp_cp))?;
    f.write_all(&cp).map_err(io(&tmp_cp))?;
    f.sync_all().map_err(io(&tmp_cp))?;
    std::fs::rename(&tmp_cp, &saved).map_err(io(&saved))?;
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    // Both renames reach the disk before any page file goes.
    sync_dir(table_dir)?;
    for page in &pages {
        std::fs::remove_file(page).map_err(io(page))?;
    }
    sync_dir(table_dir)?;
    Ok(Compacted {
        files: pages.len(),
        lines,
        keys: newest.len(),
    })
}
