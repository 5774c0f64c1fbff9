//! `meshgate`: the data plane binary. Thin: everything is in the library
//! ([`meshgate::run`]); this file only picks the allocator.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    meshgate::run()
}
