//! Measures the heap a built `Table` (and a `Balancer` for it) holds per
//! route, with a counting global allocator, for 1k, 10k, 100k and 1M
//! realistic Consul routes (the bench's route sets).
//!
//! `cargo run --release -p routing-table --example table_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use routing_table::{Balancer, Table};

#[path = "../benches/support/mod.rs"]
mod support;

/// Counts live heap bytes (as requested; allocator overhead not included).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; the counter has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's (layout has non-zero size).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (via `alloc`/`realloc` above) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` come from this allocator; `new_size` is the caller's, non-zero.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    let mut sizes = vec![1_000, 10_000, 100_000, 1_000_000];
    if let Some(n) = std::env::args().nth(1).and_then(|a| a.parse().ok()) {
        sizes = vec![n];
    }
    println!(
        "{:>9} {:>10} {:>12} {:>12} {:>14} {:>14}",
        "routes", "endpoints", "table B", "table B/rt", "balancer B/rt", "snapshot B/rt"
    );
    for n in sizes {
        let before_snapshot = live();
        let snapshot = support::snapshot(n);
        let snapshot_bytes = live() - before_snapshot;

        let before = live();
        let table = Table::build(&snapshot).expect("bench routes are valid");
        let table_bytes = live() - before;

        let before = live();
        let balancer = Balancer::new(&table, 1);
        let balancer_bytes = live() - before;

        let endpoints: usize = table.routes().iter().map(|r| r.endpoints.len()).sum();
        println!(
            "{n:>9} {endpoints:>10} {table_bytes:>12} {:>12.1} {:>14.1} {:>14.1}",
            table_bytes as f64 / n as f64,
            balancer_bytes as f64 / n as f64,
            snapshot_bytes as f64 / n as f64,
        );
        drop((balancer, table, snapshot));
    }
}
