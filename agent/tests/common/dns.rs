//! A tiny DNS server for tests: answers `A` queries over UDP on
//! 127.0.0.1 from a table the test changes at run time. A name it does
//! not know gets NXDOMAIN; a name set to fail gets SERVFAIL. Nothing
//! else (no recursion, no other types: an empty NOERROR answer).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
enum Answer {
    Addrs(Vec<Ipv4Addr>),
    Fail,
}

/// The server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    table: Arc<Mutex<HashMap<String, Answer>>>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Binds 127.0.0.1:0 and serves on a thread.
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local address");
        let table: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let queries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, q, s) = (table.clone(), queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = answer(&buf[..n], &t.lock().unwrap()) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        DnsServer {
            addr,
            table,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// `IP:PORT` for `--dns-server`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `name` resolves to `addrs` (in this order).
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr]) {
        self.table
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), Answer::Addrs(addrs.to_vec()));
    }

    /// `name` gets SERVFAIL.
    pub fn fail(&self, name: &str) {
        self.table
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), Answer::Fail);
    }

    /// Queries received so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to `query`, or `None` for something that is not a query.
fn answer(query: &[u8], table: &HashMap<String, Answer>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    let question = query.get(12..question_end)?;
    let name = labels.join(".");
    let (rcode, addrs) = match table.get(&name) {
        None => (3u8, Vec::new()),
        Some(Answer::Fail) => (2, Vec::new()),
        Some(Answer::Addrs(a)) if qtype == 1 => (0, a.clone()),
        Some(Answer::Addrs(_)) => (0, Vec::new()),
    };
    let mut r = Vec::with_capacity(question_end + 16 * addrs.len());
    r.extend_from_slice(&query[..2]);
    r.push(0x81 | (query[2] & 0x01)); // QR, RD copied
    r.push(0x80 | rcode); // RA
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for a in addrs {
        r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        r.extend_from_slice(&a.octets());
    }
    Some(r)
}
