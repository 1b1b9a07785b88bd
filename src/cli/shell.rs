//! `waymark completions <shell>` and `waymark man`: shell completions and the man page,
//! generated from the same clap definitions as the parser, so they never drift from it.

use clap::Args;
use clap_complete::Shell;

use super::{Cli, ExitStatus};

/// Arguments of `waymark completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

/// Prints the completion script of `args.shell` (e.g. `waymark completions bash >
/// ~/.local/share/bash-completion/completions/waymark`).
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitStatus> {
    // Into memory first: the generator panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::definition(), "waymark", &mut script);
    print(&script)
}

/// Prints the man page in roff (e.g. `waymark man > waymark.1; man ./waymark.1`).
pub fn man() -> anyhow::Result<ExitStatus> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::definition()).render(&mut page)?;
    print(&page)
}

/// Writes `bytes` to stdout; a reader that stopped early (`| head`) is not an error.
fn print(bytes: &[u8]) -> anyhow::Result<ExitStatus> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitStatus::Success),
    }
}
