//! `meshgate-bench`: load generator for SNI routers. Not built yet: see issue 9.
fn main() {
    eprintln!("meshgate-bench: not implemented yet");
    std::process::exit(64);
}
