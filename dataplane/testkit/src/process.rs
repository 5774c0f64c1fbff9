//! Child processes that are killed on drop and whose output is read line by line.
//!
//! [`Child`] spawns a command with piped stdout and stderr; one thread per stream sends each
//! line (ANSI escapes removed, stdout lines prefixed `[stdout] `) into a channel. Readers
//! use [`Child::recv_line`] with a timeout, and every line received is kept so a failing
//! test can print what the process said.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bounded;

/// A running child process; SIGKILLed and reaped on drop.
pub struct Child {
    name: String,
    pid: u32,
    child: Mutex<std::process::Child>,
    stdin: Mutex<Option<std::process::ChildStdin>>,
    lines: Mutex<Receiver<String>>,
    log: Mutex<Vec<String>>,
}

/// What [`Child::recv_line`] got.
pub enum Line {
    /// One line of output.
    Text(String),
    /// Both output streams closed: the process has exited (or closed them).
    Closed,
    /// Nothing arrived in time.
    TimedOut,
}

impl Child {
    /// Spawns `command` with stdin piped (if `with_stdin`), stdout and stderr read into lines.
    pub fn spawn(name: &str, mut command: Command, with_stdin: bool) -> std::io::Result<Child> {
        command
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        bounded::register_child(child.id());
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        spawn_reader(stdout, "[stdout] ", tx.clone());
        spawn_reader(stderr, "", tx);
        let stdin = child.stdin.take();
        Ok(Child {
            name: name.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            lines: Mutex::new(rx),
            log: Mutex::new(Vec::new()),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Writes `bytes` to the child's stdin.
    pub fn write_stdin(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        match stdin.as_mut() {
            Some(pipe) => {
                pipe.write_all(bytes)?;
                pipe.flush()
            }
            None => Err(std::io::Error::other(
                "stdin is not piped or already closed",
            )),
        }
    }

    /// Closes the child's stdin.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The next line of output, waiting at most `timeout`.
    pub fn recv_line(&self, timeout: Duration) -> Line {
        let received = self
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(timeout);
        match received {
            Ok(line) => {
                if std::env::var_os("MESHGATE_TEST_ECHO").is_some() {
                    eprintln!("[{}] {line}", self.name);
                }
                self.log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                Line::Text(line)
            }
            Err(RecvTimeoutError::Timeout) => Line::TimedOut,
            Err(RecvTimeoutError::Disconnected) => Line::Closed,
        }
    }

    /// The first line (from now on) for which `pred` holds, waiting at most `timeout`;
    /// `Err` says why none came, with the output so far.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_line(left) {
                Line::Text(line) if pred(&line) => return Ok(line),
                Line::Text(_) => {}
                Line::Closed => {
                    return Err(format!(
                        "{} closed its output (exit status: {:?})",
                        self.name,
                        self.exit_status(Duration::from_millis(500))
                    ))
                }
                Line::TimedOut => {
                    return Err(format!(
                        "{} said nothing matching in {timeout:?}",
                        self.name
                    ))
                }
            }
        }
    }

    /// The first line received so far matching `pred`, or else the next one
    /// to arrive within `timeout`.
    pub fn find_or_wait(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
            return Ok(line);
        }
        self.wait_for(timeout, pred)
    }

    /// Pulls in whatever output has already arrived (without waiting).
    pub fn drain(&self) {
        while let Line::Text(_) = self.recv_line(Duration::ZERO) {}
    }

    /// Every line received so far, one per line.
    pub fn log(&self) -> String {
        self.drain();
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<String> {
        self.drain();
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The exit status, if the process exits within `timeout` (it is not killed otherwise).
    pub fn exit_status(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_wait();
            if let Ok(Some(status)) = status {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) for the process to exit by itself and returns its status and all its
    /// output; kills it and returns `None` if it does not exit in time.
    pub fn wait_exit(&self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let status = self.exit_status(timeout);
        if status.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
        // Let the reader threads deliver the last lines.
        let log = self.collect_remaining(Duration::from_secs(2));
        (status, log)
    }

    fn collect_remaining(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_line(left) {
                Line::Text(_) => {}
                Line::Closed | Line::TimedOut => break,
            }
        }
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        bounded::unregister_child(self.pid);
        if std::thread::panicking() {
            eprintln!(
                "----- output of {} -----\n{}\n----- end of {} -----",
                self.name,
                self.log(),
                self.name
            );
        }
    }
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = strip_ansi(&String::from_utf8_lossy(&raw));
                    let text = text.trim_end_matches(['\n', '\r']);
                    if tx.send(format!("{prefix}{text}")).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Removes ANSI CSI escape sequences (colours, italics) from `s`.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
