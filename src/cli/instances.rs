//! Which workflow a command means: the file itself, or — for a file with `[tenants]` —
//! the instances of its tenants (all of them, those named by `--tenant`, or the one a
//! run's sync names).

use std::path::Path;

use anyhow::Context;
use waymark_connectors::config::tenants::tenant_sync;
use waymark_connectors::config::{split_tenant, Tenant};
use waymark_connectors::{sink, Workflow};

use super::UsageError;

/// The tenants of a template, listed now (its file read, or its query run).
pub async fn tenants(workflow: &Workflow) -> anyhow::Result<Vec<Tenant>> {
    sink::tenants::list(workflow)
        .await
        .with_context(|| format!("listing the tenants of {}", workflow.path().display()))
}

/// Every workflow the file at `path` runs: the file itself, or its tenants' instances
/// (only those named in `only`, when it names any).
pub async fn instances(path: &Path, only: &[String]) -> anyhow::Result<Vec<Workflow>> {
    let workflow = Workflow::load(path)?;
    if workflow.tenants().is_none() {
        if let Some(tenant) = only.first() {
            return Err(no_tenants(&workflow, tenant).into());
        }
        return Ok(vec![workflow]);
    }
    let listed = tenants(&workflow).await?;
    for wanted in only {
        if !listed.iter().any(|t| &t.id == wanted) {
            return Err(unknown(&workflow, wanted, &listed).into());
        }
    }
    let mut out = Vec::new();
    for tenant in &listed {
        if only.is_empty() || only.contains(&tenant.id) {
            out.push(workflow.instantiate(tenant)?);
        }
    }
    Ok(out)
}

/// The one workflow a command acts on: the file, or the instance of `tenant` (which a
/// file with `[tenants]` needs).
pub async fn instance(path: &Path, tenant: Option<&str>) -> anyhow::Result<Workflow> {
    let workflow = Workflow::load(path)?;
    if workflow.tenants().is_some() && tenant.is_none() {
        let listed = tenants(&workflow).await?;
        return Err(UsageError(format!(
            "{} has [tenants]: name one with --tenant ({})",
            workflow.path().display(),
            some_ids(&listed)
        ))
        .into());
    }
    let only: Vec<String> = tenant.map(str::to_string).into_iter().collect();
    let mut found = instances(path, &only).await?;
    Ok(found.remove(0))
}

/// The sync name a command means, without listing tenants (a name is enough to find
/// checkpoints and runs): the file's, or `<sync>:<tenant>`.
pub fn sync_name(workflow: &Workflow, tenant: Option<&str>) -> anyhow::Result<String> {
    match (workflow.tenants(), tenant) {
        (None, None) => Ok(workflow.name().to_string()),
        (None, Some(tenant)) => Err(no_tenants(workflow, tenant).into()),
        (Some(_), Some(tenant)) => Ok(tenant_sync(workflow.name(), tenant)),
        (Some(_), None) => Err(UsageError(format!(
            "{} has [tenants]: name one with --tenant",
            workflow.path().display()
        ))
        .into()),
    }
}

/// The workflow of a run whose sync is `sync` (an instance's sync names its tenant).
pub async fn of_sync(path: &Path, sync: &str) -> anyhow::Result<Workflow> {
    let (_, tenant) = split_tenant(sync);
    instance(path, tenant).await
}

fn no_tenants(workflow: &Workflow, tenant: &str) -> UsageError {
    UsageError(format!(
        "--tenant {tenant}: {} has no [tenants]",
        workflow.path().display()
    ))
}

fn unknown(workflow: &Workflow, wanted: &str, listed: &[Tenant]) -> UsageError {
    UsageError(format!(
        "no tenant `{wanted}` in the tenants of {} ({})",
        workflow.path().display(),
        some_ids(listed)
    ))
}

/// A few tenant ids and how many there are.
pub(super) fn some_ids(listed: &[Tenant]) -> String {
    const SHOWN: usize = 5;
    let ids: Vec<&str> = listed.iter().take(SHOWN).map(|t| t.id.as_str()).collect();
    match listed.len() {
        0 => "none is listed".into(),
        n if n <= SHOWN => ids.join(", "),
        n => format!("{}, … {n} in all", ids.join(", ")),
    }
}
