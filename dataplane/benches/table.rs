//! Lookups in a routing table loaded as `meshgate serve` loads one
//! ([`meshgate::load_routes`]: the JSON reader, then the index backed by
//! huge pages where the kernel allows), side by side with the same table
//! parsed plainly (`Table::parse`, 4 KiB pages), at 100k routes and, with
//! `MESHGATE_BENCH_1M=1`, 1M. Route sets and names are the routing-table
//! bench's.
//!
//! ```text
//! MESHGATE_BENCH_1M=1 cargo bench -p meshgate --bench table -- --quick --noplot
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use routing_table::{Format, Table};

#[path = "../../routing-table/benches/support/mod.rs"]
mod support;

fn lookups(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("meshgate-table-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut group = c.benchmark_group("dataplane_lookup");
    group.throughput(Throughput::Elements(1));
    for n in support::sizes().into_iter().filter(|&n| n >= 100_000) {
        let json = support::snapshot(n).to_json();
        let path = dir.join(format!("routes-{n}.json"));
        std::fs::write(&path, &json).expect("write routes");
        let tables = [
            ("plain", Table::parse(&json, Format::Json).expect("valid")),
            ("served", meshgate::load_routes(&path).expect("valid")),
        ];
        drop(json);
        for (how, table) in &tables {
            for (case, names) in &support::lookup_cases(table) {
                let mut k = 0;
                let id = BenchmarkId::new(format!("{case}/{how}"), n);
                group.bench_with_input(id, names, |b, names| {
                    b.iter(|| {
                        k = (k + 1) % support::POOL;
                        black_box(table.lookup(black_box(names[k].as_bytes())).map(|m| m.id))
                    })
                });
            }
        }
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, lookups);
criterion_main!(benches);
