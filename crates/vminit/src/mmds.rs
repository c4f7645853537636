//! A minimal Firecracker MMDS V2 client: std-only HTTP/1.1 over `TcpStream`.
//!
//! The flow is Firecracker's session-token scheme: `PUT /latest/api/token`
//! with `X-metadata-token-ttl-seconds` returns a token; `GET
//! /latest/meta-data` with `X-metadata-token` and `Accept: application/json`
//! returns the metadata object. Requests are retried within a time budget
//! because the guest's network may still be coming up.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use firebuild_metadata::GuestMetadata;

/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// Path of the metadata object.
pub const METADATA_PATH: &str = "/latest/meta-data";
/// Header carrying the requested token lifetime on the token request.
pub const TTL_HEADER: &str = "X-metadata-token-ttl-seconds";
/// Header carrying the token on metadata requests.
pub const TOKEN_HEADER: &str = "X-metadata-token";

/// Largest response body accepted (the metadata is a few KiB).
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MmdsError {
    #[error("connecting to MMDS at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{method} {path} at {addr}: {source}")]
    Io {
        method: &'static str,
        path: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{method} {path}: malformed HTTP response: {reason}")]
    BadResponse {
        method: &'static str,
        path: &'static str,
        reason: String,
    },
    #[error("{method} {path}: MMDS answered HTTP {status}: {body}")]
    Status {
        method: &'static str,
        path: &'static str,
        status: u16,
        body: String,
    },
    #[error("the MMDS metadata is not a valid firebuild guest document: {0}")]
    Json(#[source] serde_json::Error),
    #[error(
        "gave up on MMDS after {attempts} attempts in {secs:.1}s (is the VM's interface in the \
         MMDS network_interfaces, and is there a route to it?); last error: {last}"
    )]
    GaveUp {
        attempts: u32,
        secs: f64,
        #[source]
        last: Box<MmdsError>,
    },
}

impl MmdsError {
    /// Whether another attempt may succeed: the network is not up yet, the
    /// server restarted, or the token expired.
    fn is_transient(&self) -> bool {
        match self {
            MmdsError::Connect { .. } | MmdsError::Io { .. } => true,
            MmdsError::Status { status, .. } => *status == 401 || *status >= 500,
            _ => false,
        }
    }
}

/// A response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The client. Build with [`MmdsClient::new`], adjust, then call
/// [`MmdsClient::fetch_metadata`].
#[derive(Debug, Clone)]
pub struct MmdsClient {
    addr: SocketAddr,
    token_ttl_seconds: u32,
    io_timeout: Duration,
    retry_budget: Duration,
}

impl MmdsClient {
    /// A client for the MMDS at `addr` (normally 169.254.169.254:80), with a
    /// 10 s retry budget and 2 s per-request timeouts.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            token_ttl_seconds: 21600,
            io_timeout: Duration::from_secs(2),
            retry_budget: Duration::from_secs(10),
        }
    }

    /// How long [`Self::fetch_metadata`] keeps retrying transient failures.
    pub fn retry_budget(mut self, budget: Duration) -> Self {
        self.retry_budget = budget;
        self
    }

    /// Connect, read and write timeout of each request.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// One HTTP/1.1 request (no retry). `Connection: close` is sent, but the
    /// body is delimited by Content-Length, since Firecracker's MMDS keeps
    /// connections open.
    pub fn request(
        &self,
        method: &'static str,
        path: &'static str,
        headers: &[(&str, &str)],
    ) -> Result<Response, MmdsError> {
        let io_err = |source| MmdsError::Io {
            method,
            path,
            addr: self.addr,
            source,
        };
        let bad = |reason: String| MmdsError::BadResponse {
            method,
            path,
            reason,
        };
        let stream = TcpStream::connect_timeout(&self.addr, self.io_timeout).map_err(|source| {
            MmdsError::Connect {
                addr: self.addr,
                source,
            }
        })?;
        stream
            .set_read_timeout(Some(self.io_timeout))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(self.io_timeout))
            .map_err(io_err)?;

        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr.ip()
        );
        // An empty body is announced only where one is expected: MMDS
        // refuses a GET that carries a body.
        if method != "GET" {
            req.push_str("Content-Length: 0\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        (&stream).write_all(req.as_bytes()).map_err(io_err)?;

        let mut reader = BufReader::new(&stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).map_err(io_err)?;
        if status_line.is_empty() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )));
        }
        let status = parse_status_line(&status_line)
            .ok_or_else(|| bad(format!("status line {:?}", status_line.trim_end())))?;

        let mut content_length = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(io_err)? == 0 {
                return Err(bad("connection closed inside the headers".into()));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad(format!("header line {line:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad(format!("Content-Length {value:?}")))?;
                if n > MAX_BODY {
                    return Err(bad(format!("body of {n} bytes is too large")));
                }
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && !value.eq_ignore_ascii_case("identity")
            {
                return Err(bad(format!("unsupported Transfer-Encoding {value:?}")));
            }
        }
        let mut body = Vec::new();
        match content_length {
            Some(n) => {
                body.resize(n, 0);
                reader.read_exact(&mut body).map_err(io_err)?;
            }
            None => {
                reader
                    .take(MAX_BODY as u64 + 1)
                    .read_to_end(&mut body)
                    .map_err(io_err)?;
                if body.len() > MAX_BODY {
                    return Err(bad("body is too large".into()));
                }
            }
        }
        Ok(Response { status, body })
    }

    fn expect_ok(
        method: &'static str,
        path: &'static str,
        resp: Response,
    ) -> Result<Vec<u8>, MmdsError> {
        if resp.status == 200 {
            return Ok(resp.body);
        }
        let mut body = String::from_utf8_lossy(&resp.body).into_owned();
        body.truncate(300);
        Err(MmdsError::Status {
            method,
            path,
            status: resp.status,
            body: body.trim().to_string(),
        })
    }

    /// Gets a session token (one attempt).
    pub fn fetch_token(&self) -> Result<String, MmdsError> {
        let ttl = self.token_ttl_seconds.to_string();
        let resp = self.request("PUT", TOKEN_PATH, &[(TTL_HEADER, &ttl)])?;
        let body = Self::expect_ok("PUT", TOKEN_PATH, resp)?;
        let token = String::from_utf8_lossy(&body).trim().to_string();
        if token.is_empty() || token.contains(['\r', '\n']) {
            return Err(MmdsError::BadResponse {
                method: "PUT",
                path: TOKEN_PATH,
                reason: "empty or multi-line token".into(),
            });
        }
        Ok(token)
    }

    /// Gets the metadata object with a token (one attempt).
    pub fn fetch_metadata_once(&self, token: &str) -> Result<GuestMetadata, MmdsError> {
        let resp = self.request(
            "GET",
            METADATA_PATH,
            &[(TOKEN_HEADER, token), ("Accept", "application/json")],
        )?;
        let body = Self::expect_ok("GET", METADATA_PATH, resp)?;
        serde_json::from_slice(&body).map_err(MmdsError::Json)
    }

    /// Token then metadata, retrying transient failures (connection
    /// refused, timeouts, 5xx, 401 for an expired token) with a growing
    /// pause until the retry budget is spent.
    pub fn fetch_metadata(&self) -> Result<GuestMetadata, MmdsError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = self
                .fetch_token()
                .and_then(|token| self.fetch_metadata_once(&token));
            let err = match result {
                Ok(meta) => return Ok(meta),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            if start.elapsed() + pause > self.retry_budget {
                return Err(MmdsError::GaveUp {
                    attempts,
                    secs: start.elapsed().as_secs_f64(),
                    last: Box::new(err),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    (100..600).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const TOKEN: &str = "s3cr3t-token";

    /// A small MMDS stand-in on 127.0.0.1 implementing the V2 token flow:
    /// PUT /latest/api/token needs the TTL header; GET /latest/meta-data
    /// needs `X-metadata-token` equal to the issued token (401 otherwise).
    /// The first `drop_first` connections are closed unanswered, like a
    /// network that is not up yet. Stops when dropped.
    struct MmdsServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        seen: Arc<AtomicUsize>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl MmdsServer {
        fn start(listener: TcpListener, body: &'static str, drop_first: usize) -> Self {
            let addr = listener.local_addr().unwrap();
            listener.set_nonblocking(true).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let seen = Arc::new(AtomicUsize::new(0));
            let (stop2, seen2) = (stop.clone(), seen.clone());
            let thread = std::thread::spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let n = seen2.fetch_add(1, Ordering::SeqCst);
                            if n >= drop_first {
                                stream.set_nonblocking(false).unwrap();
                                let _ = serve(stream, body);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
            Self {
                addr,
                stop,
                seen,
                thread: Some(thread),
            }
        }

        fn bind(body: &'static str, drop_first: usize) -> Self {
            Self::start(TcpListener::bind("127.0.0.1:0").unwrap(), body, drop_first)
        }
    }

    impl Drop for MmdsServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn serve(stream: TcpStream, body: &str) -> io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(&stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l)?;
            let l = l.trim_end().to_string();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == &name.to_ascii_lowercase())
                .map(|(_, v)| v.clone())
        };
        let (status, reply) = match request_line.split_whitespace().take(2).collect::<Vec<_>>()[..]
        {
            ["PUT", TOKEN_PATH] => match header(TTL_HEADER).and_then(|v| v.parse::<u32>().ok()) {
                Some(1..=21600) => ("200 OK", TOKEN.to_string()),
                _ => ("400 Bad Request", "missing or invalid TTL".to_string()),
            },
            ["GET", _] if header("content-length").is_some() => {
                ("400 Bad Request", "GET request cannot have a body.".into())
            }
            ["GET", METADATA_PATH] => match header(TOKEN_HEADER) {
                None => ("401 Unauthorized", "No MMDS token provided.".into()),
                Some(t) if t != TOKEN => ("401 Unauthorized", "MMDS token not valid.".into()),
                Some(_) if header("accept").as_deref() != Some("application/json") => {
                    ("406 Not Acceptable", "want json".into())
                }
                Some(_) => ("200 OK", body.to_string()),
            },
            ["GET", "/boom"] => ("500 Internal Server Error", "boom".into()),
            _ => ("404 Not Found", "no such resource".into()),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        (&stream).write_all(resp.as_bytes())
    }

    const META: &str = r#"{"vmm-id":"vm-42","local-hostname":"quiet-otter","entrypoint-json":"[\"/bin/sh\",\"-c\",\"echo hi\"]","env":{"A":"1"},"stop-signal":"SIGINT"}"#;

    fn quick(addr: SocketAddr) -> MmdsClient {
        MmdsClient::new(addr)
            .io_timeout(Duration::from_secs(5))
            .retry_budget(Duration::from_secs(20))
    }

    #[test]
    fn token_flow_returns_the_metadata() {
        let server = MmdsServer::bind(META, 0);
        let meta = quick(server.addr).fetch_metadata().unwrap();
        assert_eq!(meta.vmm_id, "vm-42");
        assert_eq!(meta.local_hostname, "quiet-otter");
        assert_eq!(meta.env["A"], "1");
        assert_eq!(meta.stop_signal, "SIGINT");
        assert_eq!(server.seen.load(Ordering::SeqCst), 2, "one PUT, one GET");
    }

    #[test]
    fn get_without_or_with_a_wrong_token_is_401() {
        let server = MmdsServer::bind(META, 0);
        let c = quick(server.addr);
        let resp = c
            .request("GET", METADATA_PATH, &[("Accept", "application/json")])
            .unwrap();
        assert_eq!(resp.status, 401);
        let e = c.fetch_metadata_once("wrong").unwrap_err();
        assert!(matches!(e, MmdsError::Status { status: 401, .. }), "{e}");
        assert!(e.to_string().contains("MMDS token not valid"));
        assert_eq!(c.fetch_token().unwrap(), TOKEN);
        assert_eq!(c.fetch_metadata_once(TOKEN).unwrap().vmm_id, "vm-42");
    }

    #[test]
    fn retries_while_connections_are_dropped() {
        let server = MmdsServer::bind(META, 3);
        let meta = quick(server.addr).fetch_metadata().unwrap();
        assert_eq!(meta.vmm_id, "vm-42");
        assert!(server.seen.load(Ordering::SeqCst) >= 5);
    }

    #[test]
    fn retries_until_the_server_is_listening() {
        // Reserve a port, free it, and start listening on it a little later.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            MmdsServer::start(TcpListener::bind(addr).unwrap(), META, 0)
        });
        let result = quick(addr).fetch_metadata();
        let server = late.join().unwrap();
        assert_eq!(result.unwrap().vmm_id, "vm-42");
        drop(server);
    }

    #[test]
    fn gives_up_when_nothing_listens() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = MmdsClient::new(([127, 0, 0, 1], port).into())
            .retry_budget(Duration::from_millis(200))
            .fetch_metadata()
            .unwrap_err();
        match &e {
            MmdsError::GaveUp { attempts, last, .. } => {
                assert!(*attempts >= 1);
                assert!(matches!(**last, MmdsError::Connect { .. }));
            }
            other => panic!("expected GaveUp, got {other}"),
        }
        assert!(e.to_string().contains("gave up on MMDS"));
    }

    #[test]
    fn bad_metadata_is_not_retried() {
        let server = MmdsServer::bind(r#"{"no-vmm-id": true"#, 0);
        let e = quick(server.addr).fetch_metadata().unwrap_err();
        assert!(matches!(e, MmdsError::Json(_)), "{e}");
        assert_eq!(server.seen.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn not_found_and_server_errors() {
        let server = MmdsServer::bind(META, 0);
        let c = quick(server.addr);
        let e =
            MmdsClient::expect_ok("GET", "/x", c.request("GET", "/x", &[]).unwrap()).unwrap_err();
        assert!(matches!(e, MmdsError::Status { status: 404, .. }));
        assert!(!e.is_transient());
        let e = MmdsClient::expect_ok("GET", "/boom", c.request("GET", "/boom", &[]).unwrap())
            .unwrap_err();
        assert!(e.is_transient());
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 401\r\n"), Some(401));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line("HTTP/1.1 abc\r\n"), None);
        assert_eq!(parse_status_line("HTTP/1.1 999 x"), None);
    }
}
