//! The `waymark` command: checkpointed API syncs that survive `kill -9`.

#[macro_use]
mod cli;
mod fixtures;
mod sandbox;
mod serve;
mod sync;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::ExitCode;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use waymark_connectors::http::excerpt::{printable, printable_lines};

fn main() -> ExitCode {
    let args = cli::Cli::from_command_line();
    let json = args.log_format == cli::LogFormat::Json;
    // Per-step events (target `waymark_step`) are for JSON logs; text shows them on request.
    let default = match (args.quiet, json) {
        (true, _) => "warn".to_string(),
        (false, true) => "info".to_string(),
        (false, false) => "info,waymark_step=off".to_string(),
    };
    // --log-level, else WAYMARK_LOG, else RUST_LOG, else the default.
    use tracing_subscriber::EnvFilter;
    let flag = match args.log_level.as_deref().map(EnvFilter::try_new) {
        Some(Err(e)) => {
            eprintln!("error: --log-level: {e} (e.g. `info`, `debug`, `waymark_step=info`)");
            return cli::ExitStatus::BadInput.into();
        }
        Some(Ok(filter)) => Some(filter),
        None => None,
    };
    let filter = flag
        .or_else(|| EnvFilter::try_from_env("WAYMARK_LOG").ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    // Colour only on a terminal: never escape codes in a file or a pipe.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match json {
        true => logs.json().flatten_event(true).init(),
        false => logs.with_target(false).fmt_fields(PrintableFields).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return cli::ExitStatus::Failed.into();
        }
    };
    match runtime.block_on(cli::dispatch(args)) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {}", printable_lines(&cli::describe(&e)));
            cli::ExitStatus::of_error(&e).into()
        }
    }
}

/// Text log fields as the default formatter writes them (the message, then `name=value`),
/// each line's control characters escaped: a message quoting an API (an excerpt, a
/// cursor, a key) must not drive the terminal, nor break into two log lines. (JSON logs
/// are exact JSON: serde escapes control characters there.)
struct PrintableFields;

impl<'w> FormatFields<'w> for PrintableFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut text = FieldText(String::new());
        fields.record(&mut text);
        writer.write_str(&printable(&text.0))
    }
}

/// The fields of one event or span, as text.
struct FieldText(String);

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = match field.name() {
            "message" => write!(self.0, "{value:?}"),
            name => write!(self.0, "{name}={value:?}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use super::PrintableFields;

    /// A log written to memory.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            log.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_logs_escape_control_characters_in_messages_and_fields() {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .fmt_fields(PrintableFields)
            .finish();
        let hostile = "\x1b]0;title\x07\x1b[2J\u{9b}1m\r\nnext";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(cursor = %hostile, key = hostile, "page failed: {hostile}");
        });
        let bytes = log.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let line = String::from_utf8_lossy(&bytes);
        assert_eq!(line.lines().count(), 1, "{line}");
        let shown = r"\x1b]0;title\x07\x1b[2J\u009b1m\x0d\x0anext";
        assert!(
            line.contains(&format!("page failed: {shown} cursor={shown} key=")),
            "{line}"
        );
        assert!(
            !line.contains(|c: char| c.is_control() && c != '\n'),
            "{line}"
        );
    }
}
