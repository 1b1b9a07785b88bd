//! Connecting to PostgreSQL, and the helpers every statement uses: errors that carry the
//! server's own message, quoted identifiers.

use tokio_postgres::Client;

use waymark_engine::destination;

use super::tls::Rustls;

/// Connects with `url` (a libpq connection string or URI; it may hold a password and is
/// never shown; its `sslmode` decides on TLS, verified by `tls`); the connection is driven
/// by a task of its own.
pub(super) async fn connect(url: &str, tls: Rustls) -> Result<Client, destination::Error> {
    let (client, connection) = tokio_postgres::connect(url, tls)
        .await
        .map_err(fail("connecting"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection closed: {e}");
        }
    });
    Ok(client)
}

pub(super) fn fail(context: &'static str) -> impl Fn(tokio_postgres::Error) -> destination::Error {
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
