//! `floor-forwarder`: a measuring stick for `scripts/bench.sh`, not a
//! product. It is the simplest SNI forwarder that still does the job a
//! mesh gateway does on the wire, so the benchmark can show how far
//! meshgate and every peer are from what one extra TCP hop costs the host.
//!
//! What it does, and nothing else: one thread per `--threads` (default: one
//! per CPU), each a tokio current-thread runtime with its own
//! `SO_REUSEPORT` listener on `--listen`; for each connection it peeks the
//! ClientHello (one TLS record) until the server name is readable, closes
//! the connection unless the name is exactly `--sni`, connects to the one
//! `--backend`, and moves bytes both ways with `splice(2)` through a pipe
//! taken from the thread's pool only while bytes are in flight. A
//! half-close is passed on; an error in either direction closes both.
//! No timeouts, no limits, no metrics, no reload, no logging.
//!
//! One assumption keeps it lean: a `splice` from a socket that moves less
//! than 16 KiB is taken to have drained the socket (so no second call has to
//! fail with `EAGAIN` to learn that). That holds unless more than 256
//! segments (the pipe's slots) queue between two reads, which the
//! benchmark's workloads (64-byte ping-pong, 128 KiB bulk writes) never do.
#![deny(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

/// The simplest SNI forwarder (a benchmark's measuring stick, not a
/// product): fixed server name, fixed backend, splice both ways.
#[derive(Debug, Parser)]
#[command(name = "floor-forwarder", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The one server name forwarded; any other hello is closed.
    #[arg(long, value_name = "NAME")]
    sni: String,
    /// The one backend every forwarded connection goes to.
    #[arg(long, value_name = "ADDR")]
    backend: SocketAddr,
    /// Threads, each with its own listener. Default: the number of CPUs.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Capacity of each pooled pipe, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pipe_size: usize,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let threads = match args.threads {
        Some(0) => {
            eprintln!("floor-forwarder: --threads: must be at least 1");
            return ExitCode::from(64);
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let sni: &'static [u8] = Box::leak(args.sni.clone().into_bytes().into_boxed_slice());
    let mut handles = Vec::new();
    for i in 0..threads {
        let listener = match listen(args.listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor-forwarder: --listen {}: {e}", args.listen);
                return ExitCode::from(73);
            }
        };
        let backend = args.backend;
        let pipe_size = args.pipe_size;
        let spawned = std::thread::Builder::new()
            .name(format!("floor-{i}"))
            .spawn(move || serve(listener, sni, backend, pipe_size));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("floor-forwarder: cannot start a thread: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for h in handles {
        if let Ok(Err(e)) = h.join() {
            eprintln!("floor-forwarder: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// A non-blocking `SO_REUSEPORT` listener.
fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// One thread: accept and forward until the process ends.
fn serve(
    listener: std::net::TcpListener,
    sni: &'static [u8],
    backend: SocketAddr,
    pipe_size: usize,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::task::spawn_local(async move {
                let _ = forward(client, sni, backend, pipe_size).await;
            });
        }
    })
}

/// One connection: hello, backend, both directions.
async fn forward(
    client: TcpStream,
    sni: &[u8],
    backend: SocketAddr,
    pipe_size: usize,
) -> io::Result<()> {
    // On the heap and dropped before forwarding: an idle connection keeps
    // only the two pumps' state.
    let mut buf = vec![0u8; 4096 + 5];
    loop {
        client.readable().await?;
        let got = client.try_io(Interest::READABLE, || {
            let n = sys::peek(client.as_raw_fd(), &mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            match hello_sni(&buf[..n]) {
                Hello::Name(name) => Ok(name == sni),
                Hello::More if n < buf.len() => Err(io::ErrorKind::WouldBlock.into()),
                _ => Err(io::ErrorKind::InvalidData.into()),
            }
        });
        match got {
            Ok(true) => break,
            Ok(false) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    drop(buf);
    let server = TcpStream::connect(backend).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    tokio::try_join!(
        pump(&client, &server, pipe_size),
        pump(&server, &client, pipe_size)
    )?;
    Ok(())
}

/// Fills at most this much from a socket per call; a fill below
/// [`DRAINED_BELOW`] ends the round (see the module comment).
const FILL_MAX: usize = 1 << 20;
const DRAINED_BELOW: usize = 16 << 10;

/// Moves `from`'s bytes to `to` until `from` ends, then half-closes `to`.
async fn pump(from: &TcpStream, to: &TcpStream, pipe_size: usize) -> io::Result<()> {
    loop {
        from.readable().await?;
        let pipe = POOL
            .with(|p| p.borrow_mut().pop())
            .map_or_else(|| sys::Pipe::new(pipe_size), Ok::<sys::Pipe, io::Error>)?;
        let mut filled = 0;
        let r = from.try_io(Interest::READABLE, || {
            filled = sys::splice(from.as_raw_fd(), pipe.write_end(), FILL_MAX)?;
            if filled > 0 && filled < DRAINED_BELOW {
                // Drained: clear the readiness without another call.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match r {
            Ok(()) | Err(_) if filled > 0 => {}
            Ok(()) => {
                POOL.with(|p| p.borrow_mut().push(pipe));
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                POOL.with(|p| p.borrow_mut().push(pipe));
                continue;
            }
            Err(e) => return Err(e),
        }
        while filled > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                sys::splice(pipe.read_end(), to.as_raw_fd(), filled)
            }) {
                Ok(n) => filled -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        POOL.with(|p| p.borrow_mut().push(pipe));
    }
}

thread_local! {
    /// Empty pipes of this thread, kept for the next fill.
    static POOL: RefCell<Vec<sys::Pipe>> = const { RefCell::new(Vec::new()) };
}

/// What a peek of the first bytes says.
#[derive(Debug, PartialEq, Eq)]
enum Hello<'a> {
    /// The hello's server name.
    Name(&'a [u8]),
    /// The record is not complete yet.
    More,
    /// Not a TLS ClientHello with a server name.
    Bad,
}

/// Finds the server name in a TLS record holding a ClientHello.
fn hello_sni(b: &[u8]) -> Hello<'_> {
    if b.len() < 5 {
        return Hello::More;
    }
    if b[0] != 22 {
        return Hello::Bad;
    }
    let end = 5 + usize::from(u16::from_be_bytes([b[3], b[4]]));
    if b.len() < end {
        return Hello::More;
    }
    find_sni(&b[5..end]).map_or(Hello::Bad, Hello::Name)
}

/// The server name of a handshake message (a ClientHello), if it has one.
fn find_sni(h: &[u8]) -> Option<&[u8]> {
    let mut r = Reader(h);
    if r.u8()? != 1 {
        return None;
    }
    r.take(3)?; // handshake length
    r.take(2 + 32)?; // version, random
    let n = usize::from(r.u8()?);
    r.take(n)?; // session id
    let n = r.u16()?;
    r.take(n)?; // cipher suites
    let n = usize::from(r.u8()?);
    r.take(n)?; // compression methods
    let n = r.u16()?;
    let mut ext = Reader(r.take(n)?);
    while !ext.0.is_empty() {
        let kind = ext.u16()?;
        let n = ext.u16()?;
        let body = ext.take(n)?;
        if kind == 0 {
            let mut list = Reader(body);
            let n = list.u16()?;
            let mut names = Reader(list.take(n)?);
            if names.u8()? != 0 {
                return None;
            }
            let n = names.u16()?;
            return names.take(n);
        }
    }
    None
}

/// Big-endian reads off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// The system calls tokio does not offer: `splice(2)`, `pipe2(2)` and a
/// `MSG_PEEK` receive.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    /// A non-blocking pipe.
    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        /// A new pipe of about `size` bytes (the kernel's default size when
        /// it refuses that one).
        pub fn new(size: usize) -> io::Result<Pipe> {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
            let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both descriptors are open and
            // owned by nobody else.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
            // SAFETY: F_SETPIPE_SZ takes an int argument; the descriptor is
            // open. A refusal leaves the default size, which still works.
            let _ = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
            Ok(Pipe { read, write })
        }

        pub fn read_end(&self) -> RawFd {
            self.read.as_raw_fd()
        }

        pub fn write_end(&self) -> RawFd {
            self.write.as_raw_fd()
        }
    }

    /// Moves up to `len` bytes from `from` to `to` without blocking.
    pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: null offsets are allowed for sockets and pipes; the
        // descriptors are borrowed from live owners for the call.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Copies the bytes waiting on `fd` into `buf` without taking them.
    pub fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record for `name`, as the load generator sends it.
    fn hello(name: &str) -> Vec<u8> {
        let mut ext = Vec::new();
        // An unrelated extension first (supported_groups), then the name.
        ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
        let n = name.len() as u16;
        ext.extend_from_slice(&[0x00, 0x00]);
        ext.extend_from_slice(&(n + 5).to_be_bytes());
        ext.extend_from_slice(&(n + 3).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&n.to_be_bytes());
        ext.extend_from_slice(name.as_bytes());
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0]); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn the_server_name_is_read_from_a_whole_record_only() {
        let h = hello("web.example");
        assert_eq!(hello_sni(&h), Hello::Name(b"web.example"));
        for cut in [0, 4, 5, h.len() - 1] {
            assert_eq!(hello_sni(&h[..cut]), Hello::More, "cut at {cut}");
        }
        let mut not_tls = h.clone();
        not_tls[0] = 23;
        assert_eq!(hello_sni(&not_tls), Hello::Bad);
        let mut truncated = h.clone();
        let len = u16::from_be_bytes([h[3], h[4]]) - 10;
        truncated[3..5].copy_from_slice(&len.to_be_bytes());
        assert_eq!(hello_sni(&truncated), Hello::Bad);
    }
}
