//! Connecting to PostgreSQL, and the helpers every statement uses: errors that carry the
//! server's own message, quoted identifiers.

use tokio_postgres::Client;

use waymark_engine::destination;

use super::tls::Rustls;

/// Connects with `url` (a libpq connection string or URI; it may hold a password and is
/// never shown; its `sslmode` decides on TLS, verified by `tls`); the connection is driven
/// by a task of its own.
pub(crate) async fn connect(url: &str, tls: Rustls) -> Result<Client, destination::Error> {
    let (client, connection) = tokio_postgres::connect(url, tls)
        .await
        .map_err(failed("connecting"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection closed: {e}");
        }
    });
    Ok(client)
}

/// Connects `client` again if its connection was lost (a server restart); failing to is
/// transient: the server may still be starting.
pub(super) async fn reconnect_if_lost(
    client: &mut Client,
    url: &str,
    tls: &Rustls,
) -> Result<(), destination::Error> {
    if client.is_closed() {
        tracing::info!("PostgreSQL connection lost; connecting again");
        *client = connect(url, tls.clone())
            .await
            .map_err(|e| destination::Error::transient(e.message))?;
    }
    Ok(())
}

fn fail(context: &'static str) -> impl Fn(tokio_postgres::Error) -> destination::Error {
    move |e| {
        // The database's own message (`db_error`) says what went wrong; the outer text is
        // often just "db error".
        let detail = match e.as_db_error() {
            Some(d) => d.message().to_string(),
            None => {
                let mut text = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                text
            }
        };
        destination::Error::permanent(format!("PostgreSQL {context}: {detail}"))
    }
}

/// `name` quoted as an SQL identifier.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether a PostgreSQL failure is worth retrying: the connection was lost or reset, the
/// server is shutting down or starting, or the transaction lost a serialization race.
fn transient(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                ]
                .contains(code)
        }
        // No answer from the server at all: the socket failed.
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// [`fail`], transient where [`transient`] says so.
pub(super) fn failed(
    context: &'static str,
) -> impl Fn(tokio_postgres::Error) -> destination::Error {
    move |e| {
        let retry = transient(&e);
        let error = fail(context)(e);
        match retry {
            true => destination::Error::transient(error.message),
            false => error,
        }
    }
}
