//! The workflows `serve` runs: every file named on its command line, and every `*.toml`
//! file of a directory named there — a file with `[tenants]` as one workflow per tenant,
//! listed again at each reload — each with one API connection that all runs of its source
//! share (so one rate budget).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use waymark_connectors::config::{split_tenant, tenants};
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
    /// The tenants files of the loaded workflow files (watched like them).
    tenant_lists: Vec<PathBuf>,
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
    pub async fn load(dir: &StateDir, files: &[PathBuf]) -> anyhow::Result<Catalog> {
        let mut catalog = Catalog::default();
        for path in files {
            let loaded = catalog.load_file(dir, path, &Catalog::default()).await?;
            loaded.into_iter().for_each(|l| catalog.add(l));
        }
        Ok(catalog)
    }

    /// One file's workflows (its tenants' instances, or itself), if its sync is not loaded
    /// from another file already. An instance unchanged since `before` keeps its
    /// connection there (its runs in flight share its budget).
    async fn load_file(
        &mut self,
        dir: &StateDir,
        path: &Path,
        before: &Catalog,
    ) -> anyhow::Result<Vec<Arc<Loaded>>> {
        let workflow = Workflow::load(path)?;
        if let Some(list) = workflow.tenants().and_then(|t| tenants::file_path(t, path)) {
            self.tenant_lists.push(list);
        }
        let name = workflow.name();
        let taken = self
            .syncs
            .values()
            .find(|other| split_tenant(other.workflow.name()).0 == name);
        if let Some(other) = taken {
            return Err(UsageError(format!(
                "{} and {} both name the sync `{name}`; a sync's checkpoints belong to one \
                 file",
                other.path.display(),
                path.display()
            ))
            .into());
        }
        let workflows = match workflow.tenants() {
            None => vec![workflow],
            Some(_) => {
                let listed = crate::cli::instances::tenants(&workflow).await?;
                listed
                    .iter()
                    .map(|tenant| workflow.instantiate(tenant))
                    .collect::<Result<_, _>>()?
            }
        };
        let mut out = Vec::with_capacity(workflows.len());
        for workflow in workflows {
            match before.syncs.get(workflow.name()) {
                Some(old) if same(&old.workflow, &workflow) => out.push(old.clone()),
                _ => {
                    let api = crate::sync::api(dir, &workflow)?;
                    out.push(Arc::new(Loaded {
                        path: path.to_path_buf(),
                        workflow,
                        api,
                    }));
                }
            }
        }
        Ok(out)
    }

    fn add(&mut self, loaded: Arc<Loaded>) {
        self.syncs
            .insert(loaded.workflow.name().to_string(), loaded);
    }

    /// The catalog after the files changed: each file that loads replaces its previous
    /// version (a tenant added is a new workflow, one removed is no longer run); one that
    /// fails validation, or whose tenants cannot be listed, keeps its previous version
    /// running (`failed` names it, with why); a file gone takes its syncs away.
    pub async fn reload(
        &self,
        dir: &StateDir,
        files: &[PathBuf],
    ) -> (Catalog, Vec<(PathBuf, String)>) {
        let mut next = Catalog::default();
        let mut failed = Vec::new();
        for path in files {
            match next.load_file(dir, path, self).await {
                Ok(loaded) => loaded.into_iter().for_each(|l| next.add(l)),
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

    /// Whether a loaded file lists its tenants by a query (listed again now and then).
    pub fn lists_tenants_by_query(&self) -> bool {
        self.syncs
            .values()
            .any(|loaded| loaded.workflow.tenants().is_some_and(|t| t.query.is_some()))
    }

    /// The loaded file of `sync`.
    pub fn get(&self, sync: &str) -> Option<&Arc<Loaded>> {
        self.syncs.get(sync)
    }
}

fn same(a: &Workflow, b: &Workflow) -> bool {
    serde_json::to_value(a.file()).ok() == serde_json::to_value(b.file()).ok()
}

/// What the files look like on disk (names, sizes, modification times) — the workflow
/// files, and the tenants files of those loaded: a change means a reload.
pub fn look(
    paths: &[PathBuf],
    catalog: &Catalog,
) -> Vec<(PathBuf, Option<(std::time::SystemTime, u64)>)> {
    let mut all = files(paths).unwrap_or_default();
    all.extend(catalog.tenant_lists.iter().cloned());
    all.sort();
    all.dedup();
    all.into_iter()
        .map(|path| {
            let seen = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path, seen)
        })
        .collect()
}
