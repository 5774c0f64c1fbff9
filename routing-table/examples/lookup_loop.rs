//! Runs `LOOKUPS` lookups of one kind on a table of `ROUTES` realistic Consul
//! routes (the bench's route sets and names), for counting instructions,
//! which unlike wall time are repeatable on a shared machine:
//!
//! ```text
//! cargo build --release -p routing-table --example lookup_loop
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/lookup_loop 100000 exact 0
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/lookup_loop 100000 exact 100000
//! ```
//!
//! The difference between the two totals (`Collected`), divided by
//! `LOOKUPS`, is the cost of one lookup. Kinds: `exact`, `wildcard`, `miss`.
//! Without valgrind it also prints the wall time per lookup, handy for
//! interleaved A/B runs of two builds on a noisy machine.

use std::hint::black_box;
use std::time::Instant;

use routing_table::Table;

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: lookup_loop ROUTES exact|wildcard|miss LOOKUPS";
    let n: usize = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let kind = args.next().expect(usage);
    let lookups: usize = args.next().and_then(|a| a.parse().ok()).expect(usage);

    let table = Table::build(&support::snapshot(n)).expect("bench routes are valid");
    let cases = support::lookup_cases(&table);
    let Some((_, names)) = cases
        .iter()
        .find(|(case, _)| case.starts_with(kind.as_str()))
    else {
        panic!("{usage}");
    };

    let start = Instant::now();
    let mut hits = 0usize;
    for k in 0..lookups {
        let name = black_box(names[k % support::POOL].as_bytes());
        hits += usize::from(black_box(table.lookup(name).map(|m| m.id)).is_some());
    }
    let elapsed = start.elapsed();
    let per_lookup = elapsed.as_nanos() as f64 / lookups.max(1) as f64;
    println!("{hits} of {lookups} lookups hit, {per_lookup:.1} ns each");
}
