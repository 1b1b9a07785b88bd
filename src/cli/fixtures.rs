//! `waymark record` and `waymark test`: a workflow's API exchanges kept as fixture files,
//! and the workflow run against them offline with its expectations checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use waymark_connectors::config::expand_env;
use waymark_connectors::config::DestinationKind;
use waymark_connectors::Workflow;
use waymark_engine::{Clock, RunState, Status, SystemClock};

use super::context::stop_on_signal;
use super::{ExitStatus, UsageError};
use crate::fixtures::clock::Pinned;
use crate::fixtures::expect::{Expect, EXPECT};
use crate::fixtures::format::{at, origin, Fixtures, Manifest, Side, MANIFEST};
use crate::fixtures::record::{client, Recorder};
use crate::fixtures::replay::{Replay, TOKEN_PATH};
use crate::fixtures::runs::{self, rebased, secrets, variables, Scratch};

/// Arguments of `waymark record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// The fixtures directory: a new one, or one whose recorded runs this run follows (it
    /// starts where they left the checkpoints).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// A field whose values are replaced in every recorded body (repeatable; e.g. `email`):
    /// strings by a stable stand-in, numbers by 0.
    #[arg(long = "scrub", value_name = "FIELD")]
    scrub: Vec<String>,
    /// Keep the run's state directory and SQLite file here (default: a temporary
    /// directory, removed).
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

/// Arguments of `waymark test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// The fixtures directory (`fixtures.toml`, the runs' exchanges, `expect.toml`).
    #[arg(long, value_name = "DIR")]
    fixtures: PathBuf,
    /// Keep the runs' state directory and SQLite file here (default: a temporary
    /// directory, removed).
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

fn load(path: &Path) -> anyhow::Result<Workflow> {
    let workflow = Workflow::load(path)?;
    if workflow.tenants().is_some() {
        return Err(UsageError(format!(
            "{} has [tenants]: record and test one tenant's workflow (a file without \
             [tenants], its values written in)",
            path.display()
        ))
        .into());
    }
    Ok(workflow)
}

/// `waymark test <workflow> --fixtures <dir>`.
pub async fn test(args: TestArgs) -> anyhow::Result<ExitStatus> {
    let workflow = load(&args.workflow)?;
    let fixtures = Fixtures::load(&args.fixtures)?;
    if fixtures.manifest.runs.is_empty() {
        return Err(UsageError(format!(
            "{} records no run: `waymark record` adds them",
            args.fixtures.join(MANIFEST).display()
        ))
        .into());
    }
    let expect = Expect::load(&args.fixtures.join(EXPECT))?;
    // Credentials the run needs are never the real ones: a variable not set gets a
    // stand-in, and whatever value they have is masked before requests are compared.
    let names = variables(&workflow)?;
    for name in &names {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, format!("fixture-{name}"));
        }
    }
    let stop = stop_on_signal()?;
    let scratch = Scratch::new(args.keep.as_deref())?;
    let mut dir = scratch.state()?;
    let (mut failures, redirected) = replay(
        &mut dir, &workflow, &fixtures, &scratch, &names, &stop, true,
    )
    .await?;
    let observed = Expect::observe(&dir, &redirected, &scratch.database())?;
    failures.extend(expect.check(&observed, &dir, &scratch.database(), &redirected)?);
    if failures.is_empty() {
        out!(
            "ok: {} — {} runs replayed, {} checked",
            args.workflow.display(),
            fixtures.manifest.runs.len(),
            args.fixtures.join(EXPECT).display()
        );
        return Ok(ExitStatus::Success);
    }
    out!("FAILED: {}", args.workflow.display());
    for failure in &failures {
        out!("  {failure}");
    }
    Ok(ExitStatus::Failed)
}

/// Replays every recorded run of `fixtures` in `dir`; what went wrong, and the workflow as
/// redirected to the scratch database.
async fn replay(
    dir: &mut waymark_engine::StateDir,
    workflow: &Workflow,
    fixtures: &Fixtures,
    scratch: &Scratch,
    names: &[String],
    stop: &std::sync::atomic::AtomicBool,
    show: bool,
) -> anyhow::Result<(Vec<String>, Workflow)> {
    let base = &fixtures.manifest.base_url;
    let recorded = origin(base)?;
    let server = Replay::start(&recorded, secrets(workflow, names)).await?;
    let token_url = format!("{}{TOKEN_PATH}", server.origin());
    // A workflow writing into an API: that API's answers come from a server of their own.
    let destination = match (writes_to_api(workflow), &fixtures.manifest.destination_url) {
        (false, _) => None,
        (true, None) => {
            return Err(UsageError(format!(
                "{} records no destination API (`destination_url`), and the workflow writes \
                 into one: record it again",
                fixtures.dir.join(MANIFEST).display()
            ))
            .into())
        }
        (true, Some(url)) => {
            let recorded = origin(url)?;
            let server = Replay::start(&recorded, secrets(workflow, names)).await?;
            let base = rebased(url, &recorded, server.origin());
            let token_url = format!("{}{TOKEN_PATH}", server.origin());
            Some((server, base, token_url))
        }
    };
    let redirected = workflow.redirected(
        &rebased(base, &recorded, server.origin()),
        Some(&token_url),
        destination
            .as_ref()
            .map(|(_, base, token)| (base.as_str(), Some(token.as_str()))),
        &scratch.database(),
    )?;
    let mut failures = Vec::new();
    for run in &fixtures.manifest.runs {
        server.expect(fixtures.exchanges(run, Side::Source)?);
        if let Some((server, ..)) = &destination {
            server.expect(fixtures.exchanges(run, Side::Destination)?);
        }
        let clock = Arc::new(Pinned::replaying(at(run)?));
        let states = runs::run_streams(dir, &redirected, clock, stop).await;
        let servers = std::iter::once(&server).chain(destination.as_ref().map(|(s, ..)| s));
        failures.extend(
            servers
                .flat_map(Replay::problems)
                .map(|p| format!("{}: {p}", run.dir)),
        );
        match states {
            Ok(states) => {
                for state in &states {
                    if show {
                        out!("{}: {}", run.dir, summary(state));
                    }
                    if state.status != Status::Completed {
                        failures.push(format!("{}: {}", run.dir, summary(state)));
                    }
                }
            }
            Err(e) => {
                failures.push(format!("{}: {}", run.dir, super::describe(&e)));
                break;
            }
        }
    }
    Ok((failures, redirected))
}

fn writes_to_api(workflow: &Workflow) -> bool {
    workflow.file().destination.kind == DestinationKind::Http
}

fn summary(state: &RunState) -> String {
    let c = &state.counts;
    let outcome = match &state.status {
        Status::Failed(e) => format!("failed: {e}"),
        Status::Paused(reason) => format!("paused ({reason})"),
        other => other.name().to_string(),
    };
    format!(
        "{} {outcome}, window {}, {} pages, {} records written",
        state.started.stream,
        state.window(),
        c.pages_committed,
        c.records_committed
    )
}

/// `waymark record <workflow> --to <dir>`.
pub async fn record(args: RecordArgs) -> anyhow::Result<ExitStatus> {
    let workflow = load(&args.workflow)?;
    let names = variables(&workflow)?;
    let secrets = secrets(&workflow, &names);
    let source = &workflow.file().source;
    let base =
        expand_env(&source.base_url).map_err(|why| anyhow::anyhow!("source.base_url: {why}"))?;
    let upstream = origin(&base)?;
    let recorded_base = secrets.redact(&base);
    // A workflow writing into an API: its answers are recorded too, by a proxy of their own.
    let destination = match writes_to_api(&workflow) {
        false => None,
        true => {
            let url = workflow
                .file()
                .destination
                .base_url
                .as_deref()
                .unwrap_or("");
            Some(expand_env(url).map_err(|why| anyhow::anyhow!("destination.base_url: {why}"))?)
        }
    };
    let recorded_destination = destination.as_deref().map(|url| secrets.redact(url));
    let mut fixtures = match args.to.join(MANIFEST).exists() {
        true => Fixtures::load(&args.to)?,
        false => Fixtures {
            dir: args.to.clone(),
            manifest: Manifest {
                base_url: recorded_base.clone(),
                destination_url: recorded_destination.clone(),
                runs: Vec::new(),
            },
        },
    };
    let manifest = &fixtures.manifest;
    if (&manifest.base_url, &manifest.destination_url) != (&recorded_base, &recorded_destination) {
        return Err(UsageError(format!(
            "{} was recorded from {}{}, the workflow reads {recorded_base}{}: record into \
             another directory",
            args.to.display(),
            manifest.base_url,
            manifest
                .destination_url
                .as_deref()
                .map_or(String::new(), |d| format!(" into {d}")),
            recorded_destination
                .as_deref()
                .map_or(String::new(), |d| format!(" and writes into {d}")),
        ))
        .into());
    }
    std::fs::create_dir_all(&args.to).with_context(|| format!("creating {}", args.to.display()))?;
    let stop = stop_on_signal()?;
    let scratch = Scratch::new(args.keep.as_deref())?;
    let mut dir = scratch.state()?;
    // The runs recorded before: replayed, so this one starts where they left off.
    if !fixtures.manifest.runs.is_empty() {
        let (failures, _) = replay(
            &mut dir, &workflow, &fixtures, &scratch, &names, &stop, false,
        )
        .await?;
        if !failures.is_empty() {
            return Err(anyhow::anyhow!(
                "the runs recorded in {} do not replay, so this one would not start where \
                 they ended (see `waymark test`): {}",
                args.to.display(),
                failures.join("; ")
            ));
        }
    }
    let at = SystemClock.now();
    let forward = client(source.timeout.0, workflow.ca_file().as_deref())?;
    let proxy = Recorder::start(
        &upstream,
        Side::Source,
        forward.clone(),
        secrets.clone(),
        args.scrub.clone(),
    )
    .await?;
    let destination = match &destination {
        None => None,
        Some(url) => {
            let upstream = origin(url)?;
            let proxy = Recorder::start(
                &upstream,
                Side::Destination,
                forward,
                secrets,
                args.scrub.clone(),
            )
            .await?;
            let base = rebased(url, &upstream, proxy.origin());
            Some((proxy, base))
        }
    };
    // OAuth2 tokens come from the real endpoints, directly: those exchanges are not
    // recorded.
    let redirected = workflow.redirected(
        &rebased(&base, &upstream, proxy.origin()),
        None,
        destination.as_ref().map(|(_, base)| (base.as_str(), None)),
        &scratch.database(),
    )?;
    let clock = Arc::new(Pinned::recording(at));
    let states = runs::run_streams(&mut dir, &redirected, clock, &stop).await?;
    let mut exchanges = proxy.take();
    exchanges.extend(destination.iter().flat_map(|(proxy, _)| proxy.take()));
    for state in &states {
        out!("{}", summary(state));
    }
    if let Some(unfinished) = states.iter().find(|s| s.status != Status::Completed) {
        return Err(anyhow::anyhow!(
            "nothing recorded: a run that does not complete cannot be replayed ({})",
            summary(unfinished)
        ));
    }
    fixtures.append(at, &exchanges)?;
    let run = fixtures.manifest.runs.last().map_or("", |r| r.dir.as_str());
    let scrubbed: usize = exchanges.iter().filter(|e| !e.scrubbed.is_empty()).count();
    out!(
        "recorded {} exchanges into {} ({} with something scrubbed: see each file's `scrubbed`)",
        exchanges.len(),
        args.to.join(run).display(),
        scrubbed
    );
    // What `waymark test` will see: the fixtures replayed (scrubbed values, not the live
    // ones, in expect.toml's samples).
    let check = Scratch::new(None)?;
    let mut check_dir = check.state()?;
    let (failures, replayed) = replay(
        &mut check_dir,
        &workflow,
        &fixtures,
        &check,
        &names,
        &stop,
        false,
    )
    .await?;
    if !failures.is_empty() {
        out!(
            "the recording does not replay as recorded (`waymark test` will say the same): {}",
            failures.join("; ")
        );
    }
    let expect = args.to.join(EXPECT);
    let observed = Expect::observe(&check_dir, &replayed, &check.database())?;
    if expect.exists() {
        let differences =
            Expect::load(&expect)?.check(&observed, &check_dir, &check.database(), &replayed)?;
        if !differences.is_empty() {
            out!(
                "{} no longer says what the destination holds (edit it, or remove it and \
                 record again to have it written):",
                expect.display()
            );
            for difference in differences {
                out!("  {difference}");
            }
        }
    } else {
        let text = format!(
            "# What the destination holds after the recorded runs, as `waymark record` first\n\
             # saw it: edit to say what matters; `waymark test` checks it.\n{}",
            toml::to_string(&observed)?
        );
        std::fs::write(&expect, text).with_context(|| format!("writing {}", expect.display()))?;
        out!("wrote {}", expect.display());
    }
    Ok(ExitStatus::Success)
}
