//! A minimal "guest" on a tap: opens the tap inside the VM namespace and
//! answers ARP and ICMP echo for the VM's address with the VM's MAC, counting
//! the echo requests it saw. It proves frames cross veth -> tap (requests
//! arrive here) and tap -> veth (replies reach the pinger).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

pub struct Responder {
    stop: Arc<AtomicBool>,
    pub echo_requests: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn open_tap(ns: &PathBuf, tap: &str) -> std::io::Result<File> {
    let nsf = File::open(ns)?;
    rustix::thread::move_into_link_name_space(
        nsf.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..tap.len()].copy_from_slice(tap.as_bytes());
    // SAFETY: TUNSETIFF on a tun fd with an ifreq-sized buffer.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

impl Responder {
    /// Starts answering on `tap` in namespace `ns` for `ip` with `mac`.
    pub fn start(ns: PathBuf, tap: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Responder {
        let stop = Arc::new(AtomicBool::new(false));
        let echo_requests = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let tap = tap.to_string();
        let (stop2, count2) = (stop.clone(), echo_requests.clone());
        let thread = std::thread::spawn(move || {
            let mut f = match open_tap(&ns, &tap) {
                Ok(f) => {
                    let _ = tx.send(Ok(()));
                    f
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::SeqCst) {
                let mut pfd = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                match unsafe { libc::poll(&mut pfd, 1, 100) } {
                    0 => continue,
                    n if n < 0 => break,
                    _ => {}
                }
                let n = match f.read(&mut buf) {
                    Ok(n) => n,
                    Err(_) => break,
                };
                if let Some(reply) = answer(&buf[..n], ip, mac, &count2) {
                    let _ = f.write_all(&reply);
                }
            }
        });
        rx.recv()
            .expect("responder thread")
            .expect("open tap in VM namespace");
        Responder {
            stop,
            echo_requests,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The reply to one Ethernet frame, if it is for us.
fn answer(frame: &[u8], ip: Ipv4Addr, mac: [u8; 6], echoes: &AtomicUsize) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        return None;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let src_mac = &frame[6..12];
    match ethertype {
        0x0806 if frame.len() >= 42 => {
            let arp = &frame[14..42];
            let op = u16::from_be_bytes([arp[6], arp[7]]);
            if op != 1 || arp[24..28] != ip.octets() {
                return None;
            }
            let mut r = Vec::with_capacity(42);
            r.extend_from_slice(src_mac);
            r.extend_from_slice(&mac);
            r.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
            r.extend_from_slice(&mac);
            r.extend_from_slice(&ip.octets());
            r.extend_from_slice(&arp[8..14]); // sender MAC
            r.extend_from_slice(&arp[14..18]); // sender IP
            Some(r)
        }
        0x0800 if frame.len() >= 34 => {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let ip_hdr = &frame[14..14 + ihl];
            if ip_hdr[9] != 1 || ip_hdr[16..20] != ip.octets() || frame.len() < 14 + ihl + 8 {
                return None;
            }
            if frame[14 + ihl] != 8 {
                return None;
            }
            echoes.fetch_add(1, Ordering::SeqCst);
            let mut r = frame.to_vec();
            r[0..6].copy_from_slice(src_mac);
            r[6..12].copy_from_slice(&mac);
            // Swap IP addresses (the header checksum stays valid).
            let (s, d) = (14 + 12, 14 + 16);
            let src: [u8; 4] = r[s..s + 4].try_into().ok()?;
            let dst: [u8; 4] = r[d..d + 4].try_into().ok()?;
            r[s..s + 4].copy_from_slice(&dst);
            r[d..d + 4].copy_from_slice(&src);
            let total = usize::from(u16::from_be_bytes([r[16], r[17]]));
            let icmp_end = (14 + total).min(r.len());
            let icmp = 14 + ihl;
            r[icmp] = 0; // echo reply
            r[icmp + 2] = 0;
            r[icmp + 3] = 0;
            let c = checksum(&r[icmp..icmp_end]);
            r[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
            r.truncate(icmp_end);
            Some(r)
        }
        _ => None,
    }
}
