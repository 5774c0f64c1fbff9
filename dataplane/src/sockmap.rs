//! The sockmap forwarding engine's kernel side: the BPF verdict program
//! (dataplane/bpf/sockmap.bpf.c, embedded as built), the `SOCKHASH` it
//! redirects through, the per-direction budget it keeps (`FLOWS`), and the
//! socket facts the shard reads instead of moving bytes itself (cookies,
//! byte counts, send queues).
//!
//! Each connection's two sockets go into the map, each under the *other*
//! socket's cookie, so the program finds the peer of the socket an skb
//! arrived on by that socket's own cookie: two map updates per connection,
//! none at close for the sockets (closing a socket takes it out of every
//! map), two deletes of budget entries. What the program does not do stays
//! in the shard: FIN and half-close, resets, timeouts, and the bytes of a
//! direction the program diverted because too much was in flight.
//!
//! This module owns no policy: it loads, pairs and measures. `unsafe` here
//! is limited to `getsockopt`/`setsockopt`/`ioctl` calls on descriptors the
//! caller borrows for the call, each reading or writing a local of the
//! kernel's size, to borrowing the ring buffer's own descriptor while it is
//! open, and to declaring [`Flow`] and [`Written`] plain data for the maps.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use aya::maps::{HashMap, Map, MapData, RingBuf, SockHash};
use aya::programs::SkSkb;
use aya::Ebpf;

/// Eight-byte alignment for the embedded object: the ELF parser reads its
/// headers in place.
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

/// The verdict program and its map, as built by scripts/build-bpf.sh.
static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!("../bpf/sockmap.bpf.o"));

/// The map's name in the object.
const MAP: &str = "PEERS";
/// The budget map's name in the object.
const FLOWS: &str = "FLOWS";
/// The name of the map of passed bytes user space wrote.
const WRITTEN: &str = "WRITTEN";
/// The name of the ring of directions with passed bytes.
const EVENTS: &str = "EVENTS";
/// The budget's name in the object (a read-only global).
const BUDGET: &str = "BUDGET";
/// Default for `--sockmap-budget-kib`: bytes one direction may have on its
/// way to the peer, beyond the peer's own send buffer, before the kernel
/// stops taking more from the sender.
pub const DEFAULT_BUDGET_KIB: u32 = 4096;
/// The program's name in the object.
const PROGRAM: &str = "meshgate_verdict";
/// Set in an event's cookie when the program could not forward that
/// direction's stream whole (`BROKEN` in sockmap.bpf.c): the shard resets
/// the connection.
pub const BROKEN: u64 = 1 << 63;

/// Oldest kernel the engine runs on: 6.4 brought the sockmap fixes it
/// relies on (receive accounting and `copied_seq` for redirected skbs,
/// FIN after redirected data).
pub const MIN_KERNEL: (u32, u32) = (6, 4);

/// Why the engine cannot run here; the message is one line naming what is
/// missing.
#[derive(Debug, thiserror::Error)]
#[error("--forward sockmap: {0}")]
pub struct Unavailable(String);

/// The loaded program, attached to its map. Keep it for as long as the
/// gateway forwards: dropping it detaches the program (the kernel then
/// forwards nothing for the sockets still in the map).
pub struct Program {
    /// Owns the program and its attachment.
    _ebpf: Ebpf,
    /// The maps, for shards to open their own handles on.
    maps: Maps,
}

/// The program's two maps, for [`ShardMap::open`] on each shard's thread.
#[derive(Debug, Clone)]
pub struct Maps {
    peers: Arc<OwnedFd>,
    flows: Arc<OwnedFd>,
    written: Arc<OwnedFd>,
    /// The program's events, read by every shard.
    pub events: Arc<Events>,
}

/// The program's events (`EVENTS`): source cookies of directions whose bytes
/// it passed to user space. Every shard polls the ring ([`Events::fd`]);
/// whichever wakes first drains it into a log that each shard reads from
/// its own position, keeping the cookies of its connections, and wakes the
/// others (a poll that finds the ring already drained reports nothing).
pub struct Events {
    fd: OwnedFd,
    inner: Mutex<EventLog>,
}

struct EventLog {
    ring: RingBuf<MapData>,
    /// Cookies not yet read by every shard; `log[0]` is number `first`.
    log: VecDeque<u64>,
    first: u64,
    /// Per shard: the number of the next cookie it reads.
    read: Vec<u64>,
    /// Per shard: its wake-up eventfd, once registered.
    wakes: Vec<Option<Arc<OwnedFd>>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("fd", &self.fd).finish()
    }
}

impl Events {
    /// The ring's descriptor: readable while events wait.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Registers shard `shard`'s wake-up eventfd: written when another
    /// shard drains events into the log.
    pub fn register(&self, shard: usize, wake: Arc<OwnedFd>) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(slot) = inner.wakes.get_mut(shard) {
                *slot = Some(wake);
            }
        }
    }

    /// Appends to `out` the cookies shard `shard` has not read yet.
    pub fn take(&self, shard: usize, out: &mut Vec<u64>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        let before = inner.log.len();
        while let Some(item) = inner.ring.next() {
            if let Ok(bytes) = <[u8; 8]>::try_from(&item[..]) {
                inner.log.push_back(u64::from_ne_bytes(bytes));
            }
        }
        if inner.log.len() > before {
            for (other, wake) in inner.wakes.iter().enumerate() {
                if let (true, Some(wake)) = (other != shard, wake) {
                    crate::sys::eventfd_wake(wake.as_fd());
                }
            }
        }
        let end = inner.first + inner.log.len() as u64;
        let Some(position) = inner.read.get_mut(shard) else {
            return;
        };
        let from = (*position - inner.first) as usize;
        out.extend(inner.log.iter().skip(from));
        *position = end;
        let oldest = inner.read.iter().copied().min().unwrap_or(end);
        let done = (oldest - inner.first) as usize;
        inner.log.drain(..done);
        inner.first = oldest;
    }
}

/// What user space did with a direction's passed bytes (the layout of
/// `struct written` in sockmap.bpf.c).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Passed bytes written to the peer.
    pub bytes: u64,
    /// Non-zero while user space waits for more passed bytes (the program
    /// then sends an event for each one it passes).
    pub waiting: u64,
}

// SAFETY: `Written` is `repr(C)`, two integers, no padding.
unsafe impl aya::Pod for Written {}

/// One direction's accounting, as the verdict program keeps it in `FLOWS`
/// under the source socket's cookie (the layout of `struct flow` in
/// sockmap.bpf.c).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    /// Bytes the verdict took in from the source (redirected and passed).
    pub taken: u64,
    /// Of those, bytes passed to user space (the direction was diverted).
    pub passed: u64,
    /// The peer's `write_seq` when the first skb arrived.
    pub base: u32,
    /// The TCP sequence number after the last byte taken.
    pub next_seq: u32,
    /// Bytes cut off skbs that repeated bytes already taken (a
    /// retransmitted segment overlapping what came before, which TCP
    /// queues whole).
    pub trimmed: u64,
    /// Non-zero once `next_seq` is known.
    pub seq_known: u32,
    /// Unused (keeps the layout free of padding).
    pub reserved: u32,
}

impl Flow {
    /// Bytes the kernel redirected to the peer itself.
    pub fn redirected(&self) -> u64 {
        self.taken.saturating_sub(self.passed)
    }
}

// SAFETY: `Flow` is `repr(C)`, made of integers only (every bit pattern is
// a valid value) and has no padding (8 + 8 + 4 + 4 + 8 + 4 + 4 bytes).
unsafe impl aya::Pod for Flow {}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("maps", &self.maps).finish()
    }
}

impl Program {
    /// Checks the kernel, loads the verdict program with a map of room for
    /// `max_connections` connections and attaches it.
    ///
    /// # Errors
    /// [`Unavailable`] naming the step that failed: kernel too old, `bpf()`
    /// refused (needs root, or `CAP_BPF`, `CAP_PERFMON` and `CAP_NET_ADMIN`), the program
    /// rejected, or the attach refused.
    pub fn load(
        max_connections: usize,
        budget_kib: u32,
        shards: usize,
    ) -> Result<Program, Unavailable> {
        let release = kernel_release();
        match parse_release(&release) {
            Some(v) if v >= MIN_KERNEL => {}
            _ => {
                return Err(Unavailable(format!(
                    "needs Linux {}.{} or later, this kernel is {release:?}",
                    MIN_KERNEL.0, MIN_KERNEL.1
                )))
            }
        }
        let entries = u32::try_from(max_connections.saturating_mul(2).max(2)).unwrap_or(u32::MAX);
        let budget = budget_kib.saturating_mul(1024);
        let mut ebpf = aya::EbpfLoader::new()
            .set_max_entries(MAP, entries)
            .set_max_entries(FLOWS, entries)
            .set_max_entries(WRITTEN, entries)
            .set_global(BUDGET, &budget, true)
            .load(&OBJECT.0)
            .map_err(|e| {
                Unavailable(format!(
                    "cannot load the BPF object (creating its map needs root, or CAP_BPF and CAP_NET_ADMIN): {}",
                    chain(&e)
                ))
            })?;
        let map = ebpf
            .take_map(MAP)
            .ok_or_else(|| Unavailable(format!("the BPF object has no map {MAP}")))?;
        let hash: SockHash<MapData, u64> = SockHash::try_from(map)
            .map_err(|e| Unavailable(format!("map {MAP}: {}", chain(&e))))?;
        let program: &mut SkSkb = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| Unavailable(format!("the BPF object has no program {PROGRAM}")))?
            .try_into()
            .map_err(|e| Unavailable(format!("program {PROGRAM}: {}", chain(&e))))?;
        program.load().map_err(|e| {
            Unavailable(format!(
                "the kernel refused the verdict program (needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN): {}",
                chain(&e)
            ))
        })?;
        program.attach(hash.fd()).map_err(|e| {
            Unavailable(format!(
                "cannot attach the stream verdict program to the SOCKHASH (needs CAP_NET_ADMIN): {}",
                chain(&e)
            ))
        })?;
        let peers = hash
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Unavailable(format!("duplicating the map descriptor: {e}")))?;
        let flows = hash_map_fd(&mut ebpf, FLOWS)?;
        let written = hash_map_fd(&mut ebpf, WRITTEN)?;
        let Some(events) = ebpf.take_map(EVENTS) else {
            return Err(Unavailable(format!("the BPF object has no map {EVENTS}")));
        };
        let ring = RingBuf::try_from(events)
            .map_err(|e| Unavailable(format!("map {EVENTS}: {}", chain(&e))))?;
        // SAFETY: `as_raw_fd` names the ring's own descriptor, open for as
        // long as `ring`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(ring.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(|e| Unavailable(format!("duplicating the ring descriptor: {e}")))?;
        let events = Events {
            fd,
            inner: Mutex::new(EventLog {
                ring,
                log: VecDeque::new(),
                first: 0,
                read: vec![0; shards],
                wakes: vec![None; shards],
            }),
        };
        // `hash` (the loader's handle) closes here; the map lives on through
        // `peers` and the program's attachment.
        Ok(Program {
            _ebpf: ebpf,
            maps: Maps {
                peers: Arc::new(peers),
                flows: Arc::new(flows),
                written: Arc::new(written),
                events: Arc::new(events),
            },
        })
    }

    /// The maps' descriptors, for [`ShardMap::open`] on each shard's thread.
    pub fn maps(&self) -> Maps {
        self.maps.clone()
    }
}

/// A descriptor of its own for the object's hash map `name`.
fn hash_map_fd(ebpf: &mut Ebpf, name: &str) -> Result<OwnedFd, Unavailable> {
    let Some(Map::HashMap(map)) = ebpf.take_map(name) else {
        return Err(Unavailable(format!(
            "the BPF object has no hash map {name}"
        )));
    };
    map.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Unavailable(format!("duplicating the map descriptor: {e}")))
}

/// One shard's handle on the maps.
pub struct ShardMap {
    map: SockHash<MapData, u64>,
    flows: HashMap<MapData, u64, Flow>,
    written: HashMap<MapData, u64, Written>,
    /// The program's events, shared by every shard.
    pub events: Arc<Events>,
}

impl std::fmt::Debug for ShardMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardMap")
    }
}

impl ShardMap {
    /// A handle of its own on the maps (see [`Program::maps`]).
    ///
    /// # Errors
    /// Out of descriptors, or the kernel refuses to describe a map.
    pub fn open(maps: &Maps) -> io::Result<ShardMap> {
        let data = MapData::from_fd(maps.peers.try_clone()?).map_err(io::Error::other)?;
        let map = SockHash::try_from(Map::SockHash(data)).map_err(io::Error::other)?;
        let data = MapData::from_fd(maps.flows.try_clone()?).map_err(io::Error::other)?;
        let flows = HashMap::try_from(Map::HashMap(data)).map_err(io::Error::other)?;
        let data = MapData::from_fd(maps.written.try_clone()?).map_err(io::Error::other)?;
        let written = HashMap::try_from(Map::HashMap(data)).map_err(io::Error::other)?;
        Ok(ShardMap {
            map,
            flows,
            written,
            events: Arc::clone(&maps.events),
        })
    }

    /// The accounting of the direction whose source has cookie `source`
    /// (`None` before its first byte).
    ///
    /// # Errors
    /// The lookup fails for another reason than a missing entry.
    pub fn flow(&self, source: u64) -> io::Result<Option<Flow>> {
        match self.flows.get(&source, 0) {
            Ok(flow) => Ok(Some(flow)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(syscall_error(e)),
        }
    }

    /// Tells the program how many passed bytes of the direction whose
    /// source has cookie `source` user space has written to the peer (once
    /// that is all it passed, the program redirects again), and whether user
    /// space now waits for more (the program then sends an event for each
    /// byte it passes).
    ///
    /// # Errors
    /// The map update fails (the map is full).
    pub fn publish_written(&mut self, source: u64, bytes: u64, waiting: bool) -> io::Result<()> {
        let value = Written {
            bytes,
            waiting: u64::from(waiting),
        };
        self.written.insert(source, value, 0).map_err(syscall_error)
    }

    /// Deletes both directions' accounting of a closed connection;
    /// `passed[d]`: user space ever published a count for direction `d`.
    /// Returns the bytes the program cut off repeated segments.
    pub fn forget(&mut self, cookies: [u64; 2], passed: [bool; 2]) -> u64 {
        let mut trimmed = 0;
        for (cookie, passed) in cookies.into_iter().zip(passed) {
            if let Ok(Some(flow)) = self.flow(cookie) {
                trimmed += flow.trimmed;
            }
            let _ = self.flows.remove(&cookie);
            if passed {
                let _ = self.written.remove(&cookie);
            }
        }
        trimmed
    }

    /// Puts both sockets of a connection into the map, each under the
    /// other's cookie. From then on the kernel forwards every byte either
    /// receives; bytes queued before are released by [`release_queued`].
    ///
    /// # Errors
    /// The cookie cannot be read, or the map update fails (full map, the
    /// socket is not an established TCP socket).
    ///
    /// The upstream goes in first, under the client's cookie: from then on
    /// every new skb the client sends finds its peer, and the upstream
    /// (which has not seen the ClientHello yet) has nothing to send whose
    /// peer would be missing. Then the client, under the upstream's cookie.
    /// The kernel takes only established sockets, so the client is refused
    /// when it sent its FIN right behind its hello; the upstream is then
    /// taken out again. Either way an error leaves neither socket in the map.
    /// Returns both cookies (client, upstream): the keys of each
    /// direction's accounting ([`ShardMap::flow`]).
    pub fn pair(
        &mut self,
        client: BorrowedFd<'_>,
        upstream: BorrowedFd<'_>,
    ) -> io::Result<[u64; 2]> {
        let (c, u) = (cookie(client)?, cookie(upstream)?);
        self.map
            .insert(c, upstream.as_raw_fd(), 0)
            .map_err(syscall_error)?;
        if let Err(e) = self.map.insert(u, client.as_raw_fd(), 0) {
            let _ = self.map.remove(&c);
            return Err(syscall_error(e));
        }
        Ok([c, u])
    }
}

/// The kernel's error inside an aya map error.
fn syscall_error(e: aya::maps::MapError) -> io::Error {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error,
        other => io::Error::other(other),
    }
}

/// Makes the kernel run the verdict on bytes that were queued in `fd`
/// before it entered the map (the ClientHello, still in the client socket):
/// setting `SO_RCVLOWAT` makes TCP call the socket's data-ready callback
/// when bytes are waiting, and in the map that callback is the verdict.
///
/// # Errors
/// As `setsockopt(2)`.
pub fn release_queued(fd: BorrowedFd<'_>) -> io::Result<()> {
    crate::sys::set_recv_lowat(fd, 1)
}

/// Makes the kernel run the send work of `fd`'s psock again: the work that
/// moves redirected skbs into the socket stops when the socket has no room
/// and is restarted by the socket's write-space callback, which TCP calls on
/// room only if a sender had found it full (`SOCK_NOSPACE`); the work does
/// not set that flag. Setting `TCP_NOTSENT_LOWAT` to the value it has calls
/// the callback and changes nothing else.
///
/// # Errors
/// As `getsockopt(2)`/`setsockopt(2)`.
pub fn kick(fd: BorrowedFd<'_>) -> io::Result<()> {
    let value = crate::sys::getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT)?;
    crate::sys::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, value)
}

/// `SO_COOKIE`: the kernel's 64-bit identity of a socket.
const SO_COOKIE: libc::c_int = 57;

/// The socket's cookie, the key its peer is stored under.
///
/// # Errors
/// As `getsockopt(2)`.
pub fn cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `fd` is borrowed for the call; `value` and `len` are live
    // locals and `len` is `value`'s size.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// What TCP says about one socket's bytes (`TCP_INFO`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sequence space received: data bytes, plus one once a FIN arrived.
    pub received: u64,
    /// Sequence space the peer acknowledged: data bytes, plus one for a SYN
    /// the socket sent itself (a connecting socket) and one for its own FIN.
    pub acked: u64,
    /// Milliseconds since data last arrived.
    pub idle_ms: u32,
}

/// Reads [`Counts`] for a TCP socket.
///
/// # Errors
/// As `getsockopt(2)`.
pub fn counts(fd: BorrowedFd<'_>) -> io::Result<Counts> {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is borrowed for the call; `info` is a zeroed local of
    // `len` bytes, and the kernel writes at most `len` of them.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero is a valid value for every field (integers only), and
    // the kernel filled what it knows.
    let info = unsafe { info.assume_init() };
    Ok(Counts {
        received: info.tcpi_bytes_received,
        acked: info.tcpi_bytes_acked,
        idle_ms: info.tcpi_last_data_recv,
    })
}

/// Bytes in the socket's send queue not yet acknowledged (`SIOCOUTQ`).
///
/// # Errors
/// As `ioctl(2)`.
pub fn unacked(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut outq: libc::c_int = 0;
    // SAFETY: `fd` is borrowed for the call; TIOCOUTQ (SIOCOUTQ) writes one
    // int into the live local.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut outq) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(outq).unwrap_or(0))
}

/// `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `6.18.44-whatever` → (6, 18).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v1252"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0"), Some((5, 10)));
        assert_eq!(parse_release("6.4"), Some((6, 4)));
        assert_eq!(parse_release(""), None);
        assert!(Some((5, 15)) < Some(MIN_KERNEL));
    }

    #[test]
    fn the_embedded_object_names_its_map_and_program() {
        let text = String::from_utf8_lossy(&OBJECT.0);
        assert!(text.contains(MAP) && text.contains(PROGRAM));
    }
}
