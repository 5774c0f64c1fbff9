//! Test support shared by meshgate's integration tests (the data plane's and
//! the agent's): [`bounded::run_bounded`] puts a deadline on a test and kills
//! the child processes it started if the deadline passes, and
//! [`process::Child`] runs a child process whose output is read line by line
//! with timeouts and which is killed on drop.
#![warn(missing_docs)]

pub mod bounded;
pub mod process;
