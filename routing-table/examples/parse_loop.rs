//! Parses a JSON snapshot of `ROUTES` realistic Consul routes (the bench's
//! route sets) into a table `TIMES` times, for profiling build and decode:
//!
//! ```text
//! cargo build --release -p routing-table --example parse_loop
//! valgrind --tool=callgrind target/release/examples/parse_loop 10000 1 build
//! ```
//!
//! Prints the best wall time of each phase: decode only (`Snapshot::parse`),
//! build only (`Table::build`), and both (`Table::parse`); an optional third
//! argument (`decode`, `build` or `parse`) runs only that phase, and
//! `MESHGATE_PARSE_LOOP_VERBOSE=1` prints every run and its drop time.

use std::time::Instant;

use routing_table::{Format, Snapshot, Table};

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: parse_loop ROUTES TIMES [decode|build|parse]";
    let n: usize = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let times: usize = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let only = args.next();
    let run = |phase: &str| only.as_deref().map_or(true, |o| o == phase);
    let snapshot = support::snapshot(n);
    let json = snapshot.to_json();
    let verbose = std::env::var_os("MESHGATE_PARSE_LOOP_VERBOSE").is_some();
    // Best time of each phase, the result dropped outside the timing (the
    // bench's `build` does the same; its `decode_json` and
    // `parse_and_build_json` also time the drop, shown with `VERBOSE`).
    let mut best = [f64::MAX; 3];
    let mut time = |phase: usize, name: &str, run: &mut dyn FnMut() -> Box<dyn std::any::Any>| {
        let start = Instant::now();
        let result = run();
        let made = start.elapsed().as_secs_f64();
        drop(result);
        let dropped = start.elapsed().as_secs_f64() - made;
        best[phase] = best[phase].min(made);
        if verbose {
            eprintln!("{name} {:.1} ms + drop {:.1} ms", made * 1e3, dropped * 1e3);
        }
    };
    for _ in 0..times {
        if run("decode") {
            time(0, "decode", &mut || {
                Box::new(Snapshot::parse(&json, Format::Json).expect("valid"))
            });
        }
        if run("build") {
            time(1, "build", &mut || {
                Box::new(Table::build(&snapshot).expect("valid"))
            });
        }
        if run("parse") {
            time(2, "parse", &mut || {
                Box::new(Table::parse(&json, Format::Json).expect("valid"))
            });
        }
    }
    let shown = |t: f64| match t {
        f64::MAX => "-".to_owned(),
        t => format!("{:.1}", t * 1e3),
    };
    println!(
        "{n} routes, {} JSON bytes: decode {} ms, build {} ms, parse (both) {} ms (best of {times})",
        json.len(),
        shown(best[0]),
        shown(best[1]),
        shown(best[2]),
    );
}
