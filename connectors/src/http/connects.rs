//! Counting the connections a client begins to open. A request during which none began
//! went out at once on a connection already open (the pool hands one over without
//! waiting, or starts a connection and counts it here), so the API had it as soon as it
//! was sent: the rate gate's window may count it from then instead of from its answer,
//! which against a slow API is the difference between its whole limit and less.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The connections one client began, counted as each begins (its DNS lookup, TCP and TLS
/// handshakes come after).
#[derive(Clone, Debug, Default)]
pub(crate) struct Connects(Arc<AtomicU64>);

impl Connects {
    /// How many began so far.
    pub(crate) fn begun(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// The connector layer that counts them (`ClientBuilder::connector_layer`).
    pub(crate) fn layer(&self) -> CountLayer {
        CountLayer(self.clone())
    }
}

/// Wraps a client's connector in [`Counting`].
#[derive(Clone)]
pub(crate) struct CountLayer(Connects);

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counting<S>;

    fn layer(&self, inner: S) -> Counting<S> {
        Counting {
            inner,
            connects: self.0.clone(),
        }
    }
}

/// A connector that counts each connection it is asked for.
#[derive(Clone)]
pub(crate) struct Counting<S> {
    inner: S,
    connects: Connects,
}

impl<S: tower::Service<R>, R> tower::Service<R> for Counting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.connects.0.fetch_add(1, Ordering::SeqCst);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A loopback server answering every request on a connection with `200 ok`, keeping it
    /// open.
    async fn server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_connection_is_counted_when_it_begins_and_not_when_it_is_reused() {
        let addr = server().await;
        let connects = Connects::default();
        let client = reqwest::Client::builder()
            .connector_layer(connects.layer())
            .build()
            .unwrap();
        let url = format!("http://{addr}/");
        assert_eq!(connects.begun(), 0);
        client.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(connects.begun(), 1);
        // The next one goes on the open connection.
        client.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(connects.begun(), 1);
        // Two at once: one of them needs a second connection.
        let (a, b) = tokio::join!(client.get(&url).send(), client.get(&url).send());
        a.unwrap().text().await.unwrap();
        b.unwrap().text().await.unwrap();
        assert_eq!(connects.begun(), 2);
    }
}
