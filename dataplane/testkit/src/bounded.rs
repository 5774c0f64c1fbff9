//! Deadlines for whole tests.
//!
//! [`run_bounded`] runs a test body on its own thread and fails the test when the body
//! overruns. Child processes started by the body (the gateway, `openssl`) register their pid
//! here, so an overrun kills them instead of leaving them behind; killing the gateway also
//! unblocks whatever socket the body was stuck on.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

type Pids = Arc<Mutex<Vec<u32>>>;

thread_local! {
    static CHILDREN: RefCell<Option<Pids>> = const { RefCell::new(None) };
}

/// Records a child process started on this thread, to be killed if the test overruns.
pub fn register_child(pid: u32) {
    CHILDREN.with(|children| {
        if let Some(pids) = &*children.borrow() {
            pids.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
        }
    });
}

/// Forgets a child that has been killed and reaped (its pid may be reused).
pub fn unregister_child(pid: u32) {
    CHILDREN.with(|children| {
        if let Some(pids) = &*children.borrow() {
            pids.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|&p| p != pid);
        }
    });
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `body` on its own thread; if it has not finished after `limit` the children it
/// registered are killed and the test fails naming `name`. A panic in `body` fails the test
/// with the original message.
pub fn run_bounded<F>(name: &str, limit: Duration, body: F)
where
    F: FnOnce() + Send + 'static,
{
    let pids: Pids = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    let thread_pids = Arc::clone(&pids);
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            CHILDREN.with(|children| *children.borrow_mut() = Some(thread_pids));
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(body));
            let _ = done_tx.send(outcome);
        })
        .expect("spawn test body thread");
    match done_rx.recv_timeout(limit) {
        Ok(Ok(())) => {
            let _ = handle.join();
        }
        Ok(Err(panic)) => {
            let _ = handle.join();
            std::panic::resume_unwind(panic);
        }
        Err(_) => {
            for &pid in pids.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = send_signal(pid, libc::SIGKILL);
            }
            panic!("{name}: did not finish within its deadline of {limit:?}; its child processes were killed");
        }
    }
}
