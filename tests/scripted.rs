//! A scripted HTTP/1.1 server on loopback: every request is answered by a closure that
//! sees the request and the test's clock, and may also hang or reset the connection. It
//! records what it received. Plain TCP or TLS (rustls).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// The test clock's time (ms) when it arrived.
    pub at: u64,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter's (undecoded) value.
    pub fn param(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.to_string())
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// How to answer.
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Never answer (the client's timeout must fire).
    Hang,
    /// Send half a response, then reset the connection.
    Reset,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply::Respond {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Reply {
        if let Reply::Respond { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// The server; stops accepting when dropped.
pub struct Server {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// A plain-HTTP server answering with `handler`; `now` reads the test's clock.
    pub async fn start(
        now: impl Fn() -> u64 + Send + Sync + 'static,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Server> {
        Self::serve(now, handler, None).await
    }

    /// The same over TLS with `acceptor`.
    pub async fn start_tls(
        now: impl Fn() -> u64 + Send + Sync + 'static,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> std::io::Result<Server> {
        Self::serve(now, handler, Some(acceptor)).await
    }

    async fn serve(
        now: impl Fn() -> u64 + Send + Sync + 'static,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let host = if tls.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let now: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(now);
        let log = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (handler, now, log, tls) =
                    (handler.clone(), now.clone(), log.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(socket).await {
                                let _ = connection(stream, &*handler, &*now, &log).await;
                            }
                        }
                        None => {
                            let _ = connection_tcp(socket, &*handler, &*now, &log).await;
                        }
                    }
                });
            }
        });
        Ok(Server {
            url: format!("{scheme}://{host}:{port}"),
            requests,
            task,
        })
    }

    pub fn received(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn connection_tcp(
    socket: TcpStream,
    handler: &Handler,
    now: &(dyn Fn() -> u64 + Send + Sync),
    log: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    // Closing sends RST: a `Reply::Reset` cuts the connection mid-response. (Other closes
    // happen after the client closed its side, so nothing unsent is lost.)
    // (Deprecated because a non-zero linger blocks on drop; a zero one never does.)
    #[allow(deprecated)]
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_nodelay(true)?;
    connection(socket, handler, now, log).await
}

/// Serves requests on one connection until it closes.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: &Handler,
    now: &(dyn Fn() -> u64 + Send + Sync),
    log: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buffer, now).await? else {
            return Ok(());
        };
        let reply = handler(&request);
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
        match reply {
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            Reply::Reset => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"data\":[")
                    .await?;
                stream.flush().await?;
                return Ok(());
            }
            Reply::Respond {
                status,
                headers,
                body,
            } => {
                let mut head = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n",
                    reason(status),
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                // One write: head and body in separate small writes would wait on the
                // client's delayed ACK (Nagle), ~40 ms a request.
                head.push_str(&body);
                stream.write_all(head.as_bytes()).await?;
                stream.flush().await?;
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    now: &(dyn Fn() -> u64 + Send + Sync),
) -> std::io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let at = now();
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let total = head_end + 4 + length;
    while buffer.len() < total {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end + 4..total]).to_string();
    buffer.drain(..total);
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
        at,
    }))
}

/// `n` records `{id, updated_at, name}` with ids `from..from+n`, as a JSON array text.
pub fn records(from: u64, n: u64) -> String {
    let items: Vec<String> = (from..from + n)
        .map(|id| {
            format!(
                r#"{{"id":{id},"updated_at":"2026-01-01T00:00:{:02}Z","name":"r{id}"}}"#,
                id % 60
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// A scripted server on a runtime of its own, for tests that run the binary (the server
/// is dropped before its runtime); its clock is the wall clock.
pub struct Background {
    pub server: Server,
    _runtime: tokio::runtime::Runtime,
}

impl Background {
    pub fn start(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let wall = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
        };
        let server = runtime.block_on(Server::start(wall, handler))?;
        Ok(Background {
            server,
            _runtime: runtime,
        })
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    pub fn received(&self) -> Vec<Request> {
        self.server.received()
    }
}
