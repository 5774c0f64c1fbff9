//! `Table::lookup` and `Balancer::pick/started/finished` must never allocate:
//! a counting global allocator, armed only on the test's thread and only
//! around the calls, proves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use routing_table::{Balancer, Format, RouteId, Table};

struct Counting;

thread_local! {
    /// Count allocations made by this thread (not the harness's).
    static ARMED: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: both methods forward to `System` with the caller's arguments
// unchanged; counting does not touch the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUTES: &str = r#"
[[routes]]
sni = "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
endpoints = ["10.0.0.1:1", { address = "10.0.0.2:1", weight = 3 }, "10.0.0.3:1"]
[[routes]]
sni = "*.dc2.internal.11111111-2222-3333-4444-555555555555.consul"
endpoints = ["10.0.1.1:1", "10.0.1.2:1"]
lb_policy = "least_request"
[[routes]]
sni = "*.internal.11111111-2222-3333-4444-555555555555.consul"
endpoints = [{ address = "10.0.2.1:1", weight = 2 }, "10.0.2.2:1"]
lb_policy = "random"
"#;

#[test]
fn lookup_and_pick_do_not_allocate() {
    let table = Table::parse(ROUTES, Format::Toml).unwrap();
    let mut balancer = Balancer::new(&table, 9);
    let names: [&[u8]; 6] = [
        b"API.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul.",
        b"web.default.dc2.internal.11111111-2222-3333-4444-555555555555.consul",
        b"web.default.dc3.internal.11111111-2222-3333-4444-555555555555.consul",
        b"web.default.dc3.internal.00000000-2222-3333-4444-555555555555.consul",
        b"bad..name",
        &[b'a'; 400],
    ];

    ARMED.with(|armed| armed.set(true));
    let mut hits = [0usize; 3];
    for _ in 0..1000 {
        for name in names {
            if let Some(m) = table.lookup(name) {
                let endpoint = balancer.pick(&table, m.id).unwrap_or(0);
                balancer.started(m.id, endpoint);
                balancer.finished(m.id, endpoint);
                hits[m.id.index()] += 1;
            }
        }
    }
    ARMED.with(|armed| armed.set(false));

    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), 0);
    assert_eq!(hits, [1000, 1000, 1000]);
    // Each pick/started/finished pair leaves no connection open.
    assert!((0..3).all(|e| balancer.active(RouteId(1), e) == 0));
}
