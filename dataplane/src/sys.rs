//! Thin, safe wrappers over the few Linux system calls the data plane makes
//! outside the ring: `splice(2)`, pipes, socket options, CPU affinity,
//! eventfd, signals and resource limits.
//!
//! Every function here takes borrowed descriptors (`BorrowedFd`) or returns
//! owned ones (`OwnedFd`), so no descriptor is closed twice or used after
//! close. This module must not hold state; policy lives in the callers.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Turns a `-1` return into the thread's `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Moves up to `len` bytes from `from` to `to` without copying to user space,
/// never blocking (`SPLICE_F_NONBLOCK | SPLICE_F_MOVE`; both sockets are
/// `O_NONBLOCK`). One of the two must be a pipe.
///
/// # Errors
/// `WouldBlock` when the source has nothing or the destination has no room;
/// otherwise the kernel's error (`ECONNRESET`, `EPIPE`, ...).
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed, so open for the whole call; null
    // offsets are valid for pipes and sockets.
    let ret = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    cvt_size(ret)
}

/// Creates a non-blocking, close-on-exec pipe: `(read end, write end)`.
///
/// # Errors
/// `EMFILE`/`ENFILE` when descriptors run out.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets a pipe's capacity (`F_SETPIPE_SZ`) and returns what the kernel chose.
///
/// # Errors
/// `EPERM` above `fs.pipe-max-size` or once the user is over
/// `fs.pipe-user-pages-soft` (without `CAP_SYS_RESOURCE`).
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl with F_SETPIPE_SZ takes an int argument and a valid fd.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) }).map(|n| n as usize)
}

/// Bytes waiting in a pipe (`FIONREAD`).
///
/// # Errors
/// Only if `fd` is not a pipe.
pub fn pipe_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(n as usize)
}

/// Reads an `int` socket option.
///
/// # Errors
/// The kernel's.
pub(crate) fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals and `len` is `value`'s size.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Sets an `int` socket option.
///
/// # Errors
/// The kernel's.
pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    value: i32,
) -> io::Result<()> {
    // SAFETY: the option value is a live int and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Sets `SO_RCVLOWAT`: readiness (and a blocking peek) waits for this many
/// bytes. Used to wait for the rest of a split ClientHello without consuming it.
///
/// # Errors
/// The kernel's, for a descriptor that is not a socket.
pub fn set_recv_lowat(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

/// Arms `SO_LINGER` with a zero timeout, so that closing the socket sends a
/// reset instead of a FIN. Used to pass a reset from one side to the other.
///
/// # Errors
/// The kernel's, for a descriptor that is not a socket.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value is a live `linger` and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `shutdown(fd, SHUT_RD)`: the socket reads nothing more, and a receive or
/// a readability poll waiting on it completes (EOF, readable).
///
/// # Errors
/// `ENOTCONN` when the socket is not connected.
pub fn shutdown_read(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed descriptor.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) }).map(drop)
}

/// `shutdown(fd, SHUT_WR)`: passes a half-close on.
///
/// # Errors
/// `ENOTCONN` when the peer is already gone.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed descriptor.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}

/// The CPUs this thread may run on (`sched_getaffinity`), in order.
///
/// # Errors
/// The kernel's.
pub fn usable_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: the set is live and its exact size is passed.
    cvt(unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) })?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to one CPU.
///
/// # Errors
/// The kernel's (for example a CPU outside the cgroup's set).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: `cpu` is a CPU number returned by `usable_cpus`, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is live and its exact size is passed.
    cvt(unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) }).map(drop)
}

/// A non-blocking, close-on-exec eventfd, used to wake a shard.
///
/// # Errors
/// `EMFILE`/`ENFILE`.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the descriptor is ours.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: eventfd returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd, waking whoever polls it.
pub fn eventfd_wake(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) means a
    // wake-up is already pending, which is all we want.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Clears an eventfd's counter.
pub fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64; EAGAIN (already clear) is fine.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
}

/// Blocks `signals` for the calling thread and every thread it starts later,
/// so that they are delivered only through a signalfd.
///
/// # Errors
/// The kernel's.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    // SAFETY: sigemptyset initialises the set before use.
    let mut set: libc::sigset_t = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: `set` is live; signal numbers are valid constants.
    unsafe {
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
    }
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(set)
}

/// A close-on-exec signalfd for the (already blocked) signals in `set`.
///
/// # Errors
/// The kernel's.
pub fn signalfd(set: &libc::sigset_t) -> io::Result<OwnedFd> {
    // SAFETY: `set` is an initialised sigset; -1 asks for a new descriptor.
    let fd = cvt(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC) })?;
    // SAFETY: signalfd returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one signal number from a signalfd (blocking until one arrives).
///
/// # Errors
/// The kernel's.
pub fn read_signal(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: a zeroed siginfo is a valid buffer.
    let mut info: libc::signalfd_siginfo = unsafe { MaybeUninit::zeroed().assume_init() };
    let want = size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads exactly one siginfo into a live buffer of that size.
    let n = cvt_size(unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            want,
        )
    })?;
    if n != want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short signalfd read",
        ));
    }
    Ok(info.ssi_signo)
}

/// Raises `RLIMIT_NOFILE` as far as allowed: both limits to `fs.nr_open`
/// when the process may raise its hard limit (root, or `CAP_SYS_RESOURCE`),
/// else the soft limit to the hard one. Returns the soft limit now in force.
///
/// # Errors
/// The kernel's, from reading the limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(ceiling) = nr_open.filter(|&n| n > lim.rlim_max) {
        let wanted = libc::rlimit {
            rlim_cur: ceiling,
            rlim_max: ceiling,
        };
        // SAFETY: `wanted` is a live, initialised rlimit. Refused without
        // the privilege; then the soft limit is raised below.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            return Ok(ceiling);
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a live, initialised rlimit.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// The number of CPUs online on the host (not only those this process may
/// run on), or `None` when the kernel does not say.
pub fn online_cpus() -> Option<usize> {
    // SAFETY: sysconf takes no pointer and has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// Turns TCP keepalive on for `fd` with the route's settings; a `None`
/// field keeps the kernel's default (`net.ipv4.tcp_keepalive_*`).
pub fn set_keepalive(fd: BorrowedFd<'_>, k: &routing_table::Keepalive) -> io::Result<()> {
    let mut params = socket2::TcpKeepalive::new();
    if let Some(secs) = k.time_secs {
        params = params.with_time(std::time::Duration::from_secs(u64::from(secs)));
    }
    if let Some(secs) = k.interval_secs {
        params = params.with_interval(std::time::Duration::from_secs(u64::from(secs)));
    }
    if let Some(probes) = k.probes {
        params = params.with_retries(probes);
    }
    socket2::SockRef::from(&fd).set_tcp_keepalive(&params)
}

/// Creates a non-blocking, close-on-exec TCP socket for `addr`'s family.
///
/// # Errors
/// `EMFILE`/`ENFILE` when descriptors run out.
pub fn tcp_socket(addr: &std::net::SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; on success the descriptor is ours.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: socket returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `TCP_NODELAY`: meshgate forwards whole writes as they come and must
/// not add Nagle's delay to small ones.
///
/// # Errors
/// The kernel's.
pub fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// A socket address in the kernel's layout, kept where a ring operation can
/// point at it.
#[derive(Clone, Copy)]
pub struct RawSockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawSockAddr {
    /// Converts a standard address.
    pub fn new(addr: &std::net::SocketAddr) -> Self {
        let sock = socket2::SockAddr::from(*addr);
        // SAFETY: a zeroed sockaddr_storage is valid; we copy at most its size
        // from socket2's storage, which has the same layout.
        let mut storage: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        let len = sock.len() as usize;
        debug_assert!(len <= size_of::<libc::sockaddr_storage>());
        // SAFETY: source and destination are valid for `len` bytes and do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sock.as_ptr().cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            );
        }
        Self {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// Pointer for the kernel.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// Length for the kernel.
    pub fn len(&self) -> libc::socklen_t {
        self.len
    }
}

/// An inotify instance watching one directory for files written or renamed
/// into it.
#[derive(Debug)]
pub struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    /// Watches `dir` for `IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE`.
    ///
    /// # Errors
    /// The kernel's (`ENOENT`, `EMFILE`, inotify limits).
    pub fn new(dir: &std::path::Path) -> io::Result<DirWatch> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscall; on success the descriptor is ours.
        let fd = cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
        // SAFETY: inotify_init1 returned a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `path` is a valid NUL-terminated string for the call.
        cvt(unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE,
            )
        })?;
        Ok(DirWatch { fd })
    }

    /// The descriptor to poll.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Reads pending events; returns true if one names `file`.
    pub fn names(&self, file: &std::ffi::OsStr) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let mut buf = [0u8; 4096];
        let mut hit = false;
        loop {
            // SAFETY: reads into a live buffer of its exact size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return hit;
            }
            let n = n as usize;
            let mut pos = 0;
            let header = size_of::<libc::inotify_event>();
            while pos + header <= n {
                // SAFETY: the kernel wrote a whole event header at `pos`;
                // read_unaligned copes with the byte buffer's alignment.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(pos).cast()) };
                let name_len = event.len as usize;
                let name = &buf[(pos + header).min(n)..(pos + header + name_len).min(n)];
                let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
                if name == file.as_bytes() {
                    hit = true;
                }
                pos += header + name_len;
            }
        }
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes; returns the
/// readiness of each.
///
/// # Errors
/// The kernel's, except `EINTR`, which reports nothing ready.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a live array of `len` pollfds.
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// A close-on-exec epoll instance.
///
/// # Errors
/// `EMFILE`/`ENFILE`.
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the descriptor is ours.
    let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: epoll_create1 returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl`: `op` is `EPOLL_CTL_ADD`, `_MOD` or `_DEL`; `data` comes back
/// with each event.
///
/// # Errors
/// The kernel's (`ENOENT`, `EEXIST`, `EBADF`).
pub fn epoll_ctl(
    epoll: BorrowedFd<'_>,
    op: i32,
    fd: RawFd,
    events: u32,
    data: u64,
) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: data };
    // SAFETY: `event` is live for the call; the kernel copies it.
    cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) }).map(drop)
}

/// `epoll_wait` into `events`; returns how many were filled.
///
/// # Errors
/// The kernel's, except `EINTR`, which returns 0.
pub fn epoll_wait(
    epoll: BorrowedFd<'_>,
    events: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<usize> {
    let max = events.len().min(i32::MAX as usize) as i32;
    // SAFETY: `events` is a live, writable array of `max` entries.
    let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EINTR) {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(n as usize)
}

/// Non-blocking `accept4`, returning a non-blocking, close-on-exec socket.
///
/// # Errors
/// `WouldBlock` when no connection is queued; `EMFILE`, `ENFILE`, ...
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; on success the descriptor is ours.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: accept4 returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts a non-blocking connect.
///
/// # Errors
/// `EINPROGRESS` (the normal case: wait for writability, then read
/// `SO_ERROR`), or an immediate failure.
pub fn connect(fd: BorrowedFd<'_>, addr: &RawSockAddr) -> io::Result<()> {
    // SAFETY: `addr` points at a live sockaddr of `addr.len()` bytes.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len()) }).map(drop)
}

/// Non-blocking `recv` into `buf`, with `MSG_PEEK` when `peek`.
///
/// # Errors
/// `WouldBlock` when nothing is queued, or the socket's error.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], peek: bool) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: `buf` is a valid writable region of `buf.len()` bytes.
    let ret = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    cvt_size(ret)
}

/// Non-blocking `send(MSG_NOSIGNAL)`.
///
/// # Errors
/// `WouldBlock` when the socket buffer is full, or the socket's error.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid readable region of `buf.len()` bytes.
    let ret = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    cvt_size(ret)
}

/// Reads and clears a socket's pending error (`SO_ERROR`).
///
/// # Errors
/// The kernel's, for a descriptor that is not a socket.
pub fn take_socket_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are live and sized for SO_ERROR.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// Borrows a raw descriptor for the length of a call.
///
/// # Safety
/// `fd` must be open for the whole lifetime `'a`.
pub unsafe fn borrow_raw<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: the caller guarantees `fd` is open for `'a`.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Most descriptors one upgrade message carries.
pub const MAX_PASSED_FDS: usize = 253;

/// Sends `payload` with `fds` attached (`SCM_RIGHTS`) over a Unix stream.
///
/// # Errors
/// The kernel's; `InvalidInput` for more than [`MAX_PASSED_FDS`] descriptors
/// or an empty payload.
pub fn send_fds(sock: BorrowedFd<'_>, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS || payload.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad fd message",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let fd_bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE is a pure computation on a length.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below stay live for
    // the sendmsg call.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `control` holds CMSG_SPACE(fd_bytes) bytes, so the first
        // header and its data fit; the data is copied from a live Vec.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    // SAFETY: `msg` and everything it points at are live.
    let n = cvt_size(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })?;
    if n != payload.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short fd message"));
    }
    Ok(())
}

/// Receives one message and the descriptors attached to it (made
/// close-on-exec). Returns the payload bytes read and the descriptors.
///
/// # Errors
/// The kernel's; `UnexpectedEof` when the peer closed.
pub fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let fd_bytes = MAX_PASSED_FDS * size_of::<RawFd>();
    // SAFETY: CMSG_SPACE is a pure computation on a length.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below stay live for
    // the recvmsg call.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` and everything it points at are live and writable.
    let n = cvt_size(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` with well-formed headers, which the
    // CMSG_* walkers read within `msg_controllen`; every SCM_RIGHTS entry is
    // a descriptor now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 && fds.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed"));
    }
    Ok((n, fds))
}

/// Asks the kernel to back the 2 MiB-aligned part of `len` bytes at `start`
/// with transparent huge pages, now: `MADV_HUGEPAGE`, then `MADV_COLLAPSE`
/// (Linux 6.1+), which copies the range into huge pages synchronously. Used
/// for a large routing table's index, which lookups read at random, so that
/// a lookup does not also miss the TLB. Returns the bytes advised (0 when
/// the range holds no whole aligned 2 MiB).
///
/// Both are advice: neither changes the contents of the memory or whether
/// it is mapped, so any range is sound to pass (a range that is not
/// mapped gives `ENOMEM`). The range advised lies wholly inside the one
/// given (start rounded up, end rounded down), so memory next to it is
/// never touched.
///
/// # Errors
/// The kernel's: `EINVAL` without THP support or on kernels before 6.1,
/// `EAGAIN`/`ENOMEM` when no huge page could be had; the memory then stays
/// as it was.
pub fn advise_huge_pages(start: *const u8, len: usize) -> io::Result<usize> {
    const HUGE: usize = 2 << 20;
    let first = (start as usize).div_ceil(HUGE) * HUGE;
    let end = (start as usize).saturating_add(len) / HUGE * HUGE;
    if end <= first {
        return Ok(0);
    }
    let (addr, len) = (first as *mut libc::c_void, end - first);
    // SAFETY: advice only, see above; `addr..addr + len` is page aligned.
    cvt(unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) })?;
    // SAFETY: as above; the kernel copies the pages, contents unchanged.
    cvt(unsafe { libc::madvise(addr, len, libc::MADV_COLLAPSE) })?;
    Ok(len)
}

/// Gives the kernel back the whole pages inside `spare`, the unused capacity
/// of a long-lived reservation, after a burst touched them
/// (`MADV_DONTNEED`): they stop counting in RSS and read as zeros if used
/// again. Returns the bytes given back.
///
/// Sound for any `spare` borrowed mutably: the range advised lies wholly
/// inside it (start rounded up, end rounded down to pages), so no other
/// value's memory is touched, and it holds `MaybeUninit` values, for which
/// zeros are as good as what was there.
pub fn discard_pages<T>(spare: &mut [std::mem::MaybeUninit<T>]) -> usize {
    // SAFETY: `sysconf` only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = spare.as_mut_ptr() as usize;
    let first = start.div_ceil(page) * page;
    let end = (start + std::mem::size_of_val(spare)) / page * page;
    if end <= first {
        return 0;
    }
    // SAFETY: see above; `first..end` is page aligned and inside `spare`,
    // which is mapped (it is borrowed).
    match unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) } {
        0 => end - first,
        _ => 0,
    }
}

/// Gives the calling thread's free allocator memory back to the kernel now
/// (mimalloc's `mi_collect(true)`), for a shard whose burst of connections
/// has just ended: mimalloc otherwise keeps freed pages for reuse. The
/// binary's global allocator is mimalloc; where it is not (a test linking
/// the library), this only tidies mimalloc's own empty heap.
pub fn return_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and is safe to call from any
    // thread at any time; it only frees memory no allocation refers to.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discarded_spare_capacity_is_reusable_and_the_kept_part_intact() {
        let mut v: Vec<u64> = Vec::with_capacity(1 << 20);
        v.extend(0..1 << 20);
        v.truncate(100);
        let spare = std::mem::size_of_val(v.spare_capacity_mut());
        let given = discard_pages(v.spare_capacity_mut());
        // All but the partial pages at either end of 8 MiB.
        assert!(given > spare / 2 && given <= spare, "{given} of {spare}");
        assert_eq!(given % 4096, 0);
        assert!((0..100).eq(v.iter().copied()));
        v.extend(100..1 << 20);
        assert!((0..1 << 20).eq(v.iter().copied()));
        assert_eq!(discard_pages::<u8>(&mut []), 0);
    }
}
