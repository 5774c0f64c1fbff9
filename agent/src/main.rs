//! `meshgate-agent`: watches the Consul HTTP API and writes routing snapshots
//! that the data plane picks up. Not built yet: see issue 5.
fn main() {
    eprintln!("meshgate-agent: not implemented yet");
    std::process::exit(64);
}
