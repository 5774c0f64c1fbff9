//! A seccomp filter that makes `io_uring_setup(2)` fail with EPERM in a child
//! process, as Docker's default profile and several Kubernetes distributions
//! do. Everything else is allowed.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `io_uring_setup`: the same number on every architecture since 5.1.
const NR_IO_URING_SETUP: u32 = 425;

/// Installs the filter in `cmd`'s child between fork and exec.
pub fn deny_io_uring(cmd: &mut Command) {
    // BPF program: load the syscall number; if it is io_uring_setup return
    // ERRNO(EPERM), else ALLOW.
    const LD_NR: libc::sock_filter = libc::sock_filter {
        code: 0x20,
        jt: 0,
        jf: 0,
        k: 0,
    }; // BPF_LD|BPF_W|BPF_ABS, seccomp_data.nr
    let jeq = libc::sock_filter {
        code: 0x15,
        jt: 0,
        jf: 1,
        k: NR_IO_URING_SETUP,
    }; // BPF_JMP|BPF_JEQ|BPF_K
    let deny = libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x0005_0000 | libc::EPERM as u32,
    }; // RET ERRNO
    let allow = libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    }; // RET ALLOW
    let filter = [LD_NR, jeq, deny, allow];
    // SAFETY: the closure runs in the child after fork; it only makes two
    // prctl calls on data it owns (the filter array is copied into the
    // closure), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
