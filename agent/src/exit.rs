//! The process exit codes, from sysexits(3), as `meshgate` uses them too;
//! README.md's "Exit codes" table lists both binaries'.

/// Bad flag, variable or registration (`EX_USAGE`).
pub const CONFIG: u8 = 64;
/// `--once`: Consul could not be read (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;
/// Internal error: the runtime or the signal handlers cannot be set up
/// (`EX_SOFTWARE`).
pub const INTERNAL: u8 = 70;
/// The admin address or the routes directory cannot be used
/// (`EX_CANTCREAT`).
pub const CANT_CREATE: u8 = 73;
