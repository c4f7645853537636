//! http(s) sources against a small HTTP server the test runs on 127.0.0.1.

use firebuild_source::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Serves fixed bodies by path; 404 otherwise. Stopped on drop.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(files: &[(&str, &str)]) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let files: HashMap<String, String> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, req2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = handle(conn, &files, &req2);
            }
        });
        Server {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

fn handle(
    mut conn: TcpStream,
    files: &HashMap<String, String>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    log.lock().unwrap().push(path.clone());
    let (status, body) = match files.get(&path) {
        Some(b) => ("200 OK", b.clone()),
        None if path.starts_with("/forbidden") => ("403 Forbidden", "no".into()),
        None => ("404 Not Found", "not found".into()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn opts() -> (tempfile::TempDir, SourceOptions) {
    let d = tempfile::tempdir().unwrap();
    let o = SourceOptions::new(d.path());
    (d, o)
}

#[test]
fn http_dockerfile_and_context() {
    let srv = Server::start(&[
        ("/proj/Dockerfile", "FROM scratch\nCOPY app.conf /etc/\n"),
        ("/proj/app.conf", "port=80\n"),
        ("/proj/sub/x.txt", "x"),
    ]);
    let (_d, o) = opts();
    let src = load_str(&srv.url("/proj/Dockerfile"), &o).unwrap();
    assert_eq!(src.dockerfile, "FROM scratch\nCOPY app.conf /etc/\n");
    assert_eq!(src.context.kind(), "http");
    assert_eq!(src.context.describe(), srv.url("/proj/"));
    assert_eq!(src.context.read("app.conf").unwrap(), b"port=80\n");
    assert_eq!(src.context.read("./sub/../sub/x.txt").unwrap(), b"x");
    assert_eq!(src.context.glob("app.conf").unwrap(), vec!["app.conf"]);
    let reqs = srv.requests.lock().unwrap().clone();
    assert!(reqs.contains(&"/proj/app.conf".to_string()), "{reqs:?}");
    assert!(reqs.contains(&"/proj/sub/x.txt".to_string()), "{reqs:?}");
}

#[test]
fn http_errors_name_url_and_status() {
    let srv = Server::start(&[("/p/Dockerfile", "FROM scratch\n")]);
    let (_d, o) = opts();
    let url = srv.url("/missing/Dockerfile");
    let e = load_str(&url, &o).unwrap_err();
    assert!(
        matches!(e, SourceError::HttpStatus { status: 404, .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&url) && msg.contains("404"), "{msg}");

    let e = load_str(&srv.url("/forbidden/Dockerfile"), &o).unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");

    let src = load_str(&srv.url("/p/Dockerfile"), &o).unwrap();
    let e = src.context.read("nope.txt").unwrap_err();
    assert!(e.to_string().contains(&srv.url("/p/nope.txt")), "{e}");
    assert!(e.to_string().contains("404"), "{e}");
    assert!(matches!(
        src.context.read("../etc/passwd"),
        Err(SourceError::Escape { .. })
    ));
    assert!(matches!(
        src.context.glob("*.txt"),
        Err(SourceError::Unsupported { .. })
    ));
}

#[test]
fn connection_refused_is_an_error() {
    // Bind then drop to get a port nothing listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_d, o) = opts();
    let url = format!("http://{addr}/Dockerfile");
    let e = load_str(&url, &o).unwrap_err();
    assert!(matches!(e, SourceError::Http { .. }), "{e}");
    assert!(e.to_string().contains(&url), "{e}");
}
