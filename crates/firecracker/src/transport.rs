//! HTTP/1.1 over the API's Unix socket: one connection per request (the API
//! serves one request at a time anyway, and a fresh connection never trips
//! over a half-closed keep-alive one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::error::{Error, Result};

/// Largest answer body read; Firecracker's biggest is `GET /vm/config` (or a
/// large `GET /mmds`), far below this.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// A status and body as Firecracker sent them.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub status: u16,
    pub body: Bytes,
}

/// Checks a socket path fits in a Unix socket address.
pub fn check_socket_path(path: &Path, what: &'static str) -> Result<()> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(Error::SocketPathTooLong {
            path: path.to_path_buf(),
            len,
            max: MAX_SOCKET_PATH,
            what,
        });
    }
    Ok(())
}

/// Sends one request and reads the whole answer, all within `timeout`.
pub(crate) async fn send(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<RawResponse> {
    let method_name = method.to_string();
    match tokio::time::timeout(timeout, exchange(socket, method, path, body)).await {
        Ok(result) => result,
        Err(_) => Err(Error::RequestTimeout {
            method: method_name,
            path: path.to_string(),
            timeout,
        }),
    }
}

async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<RawResponse> {
    let http_err = |source| Error::Http {
        method: method.to_string(),
        path: path.to_string(),
        socket: socket.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| Error::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    // The connection task ends by itself once `sender` is dropped.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "Firecracker API connection closed with an error");
        }
    });

    let mut builder = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(HOST, "localhost")
        .header(ACCEPT, "application/json");
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Error::UnexpectedResponse {
            method: method.to_string(),
            path: path.to_string(),
            status: 0,
            reason: format!("cannot build the request: {e}"),
        })?;
    let response = sender.send_request(request).await.map_err(http_err)?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| Error::UnexpectedResponse {
            method: method.to_string(),
            path: path.to_string(),
            status,
            reason: format!("cannot read the answer body: {e}"),
        })?
        .to_bytes();
    Ok(RawResponse { status, body })
}

/// Waits until something accepts connections on `socket`, polling with a
/// short backoff. `alive` is asked between attempts so a VMM that died is
/// reported at once instead of after the whole timeout.
pub(crate) async fn wait_for_socket(
    socket: &Path,
    timeout: Duration,
    mut alive: impl FnMut() -> std::result::Result<(), Error>,
) -> Result<()> {
    check_socket_path(socket, "run directory or chroot base")?;
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    let mut last_error;
    loop {
        match UnixStream::connect(socket).await {
            Ok(_) => return Ok(()),
            Err(e) => last_error = e.to_string(),
        }
        alive()?;
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(Error::SocketTimeout {
                socket: PathBuf::from(socket),
                waited: timeout,
                last_error,
            });
        }
        tokio::time::sleep(delay.min(timeout - elapsed)).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}
