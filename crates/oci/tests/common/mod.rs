//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use firebuild_oci::RegistryConfig;

/// A registry config that reads credentials from `dir` (never the real ~/.docker).
pub fn isolated_config(dir: &Path) -> RegistryConfig {
    RegistryConfig {
        docker_config_dir: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A TCP proxy to a registry that can cut each connection after a number
/// of response bytes, and notes resumed (`Range: bytes=N-`, N > 0) requests.
pub struct CutProxy {
    addr: SocketAddr,
    cap: Arc<AtomicU64>,
    saw_resume: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CutProxy {
    /// `cap` bytes per connection from upstream; `u64::MAX` for no limit.
    pub fn start(upstream: SocketAddr, cap: u64) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let cap = Arc::new(AtomicU64::new(cap));
        let saw_resume = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, st) = (cap.clone(), saw_resume.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(up) = TcpStream::connect(upstream) {
                            serve(client, up, c.load(Ordering::SeqCst), s.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        CutProxy {
            addr,
            cap,
            saw_resume,
            stop,
            thread: Some(thread),
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_cap(&self, cap: u64) {
        self.cap.store(cap, Ordering::SeqCst);
    }

    pub fn saw_resume(&self) -> bool {
        self.saw_resume.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(client: TcpStream, up: TcpStream, cap: u64, saw_resume: Arc<AtomicBool>) {
    let (mut c_read, mut u_write) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            if let Some(pos) = text.find("range: bytes=") {
                let start: String = text[pos + 13..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                if start.parse::<u64>().unwrap_or(0) > 0 {
                    saw_resume.store(true, Ordering::SeqCst);
                }
            }
            if u_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (up, client);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut sent: u64 = 0;
        loop {
            let n = match u_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let allowed = cap.saturating_sub(sent).min(n as u64) as usize;
            if allowed > 0 && c_write.write_all(&buf[..allowed]).is_err() {
                break;
            }
            sent += allowed as u64;
            if allowed < n {
                break; // cut
            }
        }
        let _ = c_write.shutdown(Shutdown::Both);
        let _ = u_read.shutdown(Shutdown::Both);
    });
}
