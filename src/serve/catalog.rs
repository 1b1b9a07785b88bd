//! The workflows `serve` runs: every file named on its command line, and every `*.toml`
//! file of a directory named there, each with one API connection that all runs of its
//! source share (so one rate budget).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use waymark_connectors::{Api, Workflow};
use waymark_engine::StateDir;

use crate::cli::UsageError;

/// One loaded workflow file.
pub struct Loaded {
    /// Where it was read from.
    pub path: PathBuf,
    pub workflow: Workflow,
    /// Its source's connection, shared by all its runs.
    pub api: Arc<Api>,
}

/// The loaded workflows by sync name.
#[derive(Default)]
pub struct Catalog {
    pub syncs: BTreeMap<String, Arc<Loaded>>,
}

/// The workflow files among `paths`: files as named, and the `*.toml` files of
/// directories, sorted.
pub fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| UsageError(format!("cannot list {}: {e}", path.display())))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    if out.is_empty() {
        return Err(UsageError(
            "no workflow files: name files, or directories holding *.toml files".into(),
        )
        .into());
    }
    Ok(out)
}

impl Catalog {
    /// Loads every file; any that fails validation stops the start (exit 2), as two files
    /// naming the same sync do (their checkpoints would be one).
    pub fn load(dir: &StateDir, files: &[PathBuf]) -> anyhow::Result<Catalog> {
        let mut catalog = Catalog::default();
        for path in files {
            let loaded = catalog.load_one(dir, path)?;
            catalog.add(loaded);
        }
        Ok(catalog)
    }

    /// One file, if its sync is not loaded from another file already.
    fn load_one(&self, dir: &StateDir, path: &Path) -> anyhow::Result<Loaded> {
        let workflow = Workflow::load(path)?;
        let name = workflow.name();
        if let Some(other) = self.syncs.get(name) {
            return Err(UsageError(format!(
                "{} and {} both name the sync `{name}`; a sync's checkpoints belong to one \
                 file",
                other.path.display(),
                path.display()
            ))
            .into());
        }
        let api = crate::sync::api(dir, &workflow)?;
        Ok(Loaded {
            path: path.to_path_buf(),
            workflow,
            api,
        })
    }

    fn add(&mut self, loaded: Loaded) {
        self.syncs
            .insert(loaded.workflow.name().to_string(), Arc::new(loaded));
    }

    /// The catalog after the files changed: each file that loads replaces its previous
    /// version; one that fails validation keeps its previous version running (`failed`
    /// names it, with why); a file gone takes its syncs away.
    pub fn reload(&self, dir: &StateDir, files: &[PathBuf]) -> (Catalog, Vec<(PathBuf, String)>) {
        let mut next = Catalog::default();
        let mut failed = Vec::new();
        for path in files {
            match next.load_one(dir, path) {
                // Unchanged: the same connection (its runs in flight share its budget).
                Ok(loaded) => match self.syncs.get(loaded.workflow.name()) {
                    Some(old) if same(&old.workflow, &loaded.workflow) => {
                        next.syncs
                            .insert(old.workflow.name().to_string(), old.clone());
                    }
                    _ => next.add(loaded),
                },
                Err(e) => {
                    failed.push((path.clone(), crate::cli::describe(&e)));
                    for (name, old) in &self.syncs {
                        if old.path == *path {
                            next.syncs.insert(name.clone(), old.clone());
                        }
                    }
                }
            }
        }
        (next, failed)
    }

    /// The loaded file of `sync`.
    pub fn get(&self, sync: &str) -> Option<&Arc<Loaded>> {
        self.syncs.get(sync)
    }
}

fn same(a: &Workflow, b: &Workflow) -> bool {
    serde_json::to_value(a.file()).ok() == serde_json::to_value(b.file()).ok()
}

/// What the files look like on disk (names, sizes, modification times): a change means a
/// reload.
pub fn look(paths: &[PathBuf]) -> Vec<(PathBuf, Option<(std::time::SystemTime, u64)>)> {
    files(paths)
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let seen = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path, seen)
        })
        .collect()
}
