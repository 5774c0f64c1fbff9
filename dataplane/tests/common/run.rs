//! The `meshgate` binary run to completion (subcommands, and `serve` refusing to start).

use std::process::Command;
use std::time::Duration;

use super::process::Child;

/// Runs the binary with `args`, bounded to 10 s; returns (exit code, stdout and stderr
/// lines, stdout's without their `[stdout] ` mark).
pub fn meshgate(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshgate"));
    cmd.args(args).env("NO_COLOR", "1");
    let child = Child::spawn("meshgate", cmd, false).expect("spawn meshgate");
    let (status, _) = child.wait_exit(Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("meshgate {args:?} did not exit within 10 s"));
    let lines = child
        .lines()
        .into_iter()
        .map(|l| l.trim_start_matches("[stdout] ").to_string())
        .collect();
    (status.code(), lines)
}

/// [`meshgate`] with the output as one string.
pub fn meshgate_output(args: &[&str]) -> (Option<i32>, String) {
    let (code, lines) = meshgate(args);
    (code, lines.join("\n"))
}
