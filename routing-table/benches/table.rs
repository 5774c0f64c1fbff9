//! Routing table benches: lookup (exact hit, wildcard hit, miss, and from
//! 100k routes an exact hit on names spread wider than the caches), build, and
//! JSON snapshot decode, for 1k, 10k and 100k realistic Consul routes (1M
//! with `MESHGATE_BENCH_1M=1`). Bytes per route: `cargo run --release -p
//! routing-table --example table_memory`. On a shared machine, wall times
//! move a lot; instruction counts do not: the `lookup_loop` and `parse_loop`
//! examples run the same work under `valgrind --tool=callgrind`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use routing_table::{Balancer, Format, RouteId, Snapshot, Table};

mod support;

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    for n in support::sizes() {
        let table = Table::build(&support::snapshot(n)).expect("bench routes are valid");
        for (case, names) in &support::lookup_cases(&table) {
            let mut k = 0;
            group.bench_with_input(BenchmarkId::new(*case, n), names, |b, names| {
                b.iter(|| {
                    k = (k + 1) % support::POOL;
                    black_box(table.lookup(black_box(names[k].as_bytes())).map(|m| m.id))
                })
            });
        }
        // Cold: exact hits on names spread over the table, in random order.
        if n >= 100_000 {
            let names = support::spread_names(&table);
            let mut k = 0;
            group.bench_with_input(
                BenchmarkId::new("exact_hit_spread", n),
                &names,
                |b, names| {
                    b.iter(|| {
                        k = (k + 1) % names.len();
                        black_box(table.lookup(black_box(names[k].as_bytes())).map(|m| m.id))
                    })
                },
            );
        }
    }
    group.finish();
}

fn pick(c: &mut Criterion) {
    let table = Table::build(&support::snapshot(10_000)).expect("bench routes are valid");
    let mut balancer = Balancer::new(&table, 1);
    let mut group = c.benchmark_group("pick");
    let mut id = 0;
    group.bench_function("mixed_policies_10k", |b| {
        b.iter(|| {
            id = (id + 1) % table.len() as u32;
            black_box(balancer.pick(&table, RouteId(id)))
        })
    });
    group.finish();
}

fn build_and_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for n in support::sizes() {
        let snapshot = support::snapshot(n);
        let json = snapshot.to_json();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("build", n), &snapshot, |b, s| {
            b.iter_batched(
                || (),
                |()| Table::build(s).expect("valid"),
                BatchSize::PerIteration,
            )
        });
        // Results are dropped outside the timing, as in the data plane,
        // which frees a replaced table later on its control thread.
        group.bench_with_input(BenchmarkId::new("decode_json", n), &json, |b, json| {
            b.iter_with_large_drop(|| Snapshot::parse(json, Format::Json).expect("valid"))
        });
        group.bench_with_input(
            BenchmarkId::new("parse_and_build_json", n),
            &json,
            |b, json| b.iter_with_large_drop(|| Table::parse(json, Format::Json).expect("valid")),
        );
    }
    group.finish();
}

criterion_group!(benches, lookups, pick, build_and_decode);
criterion_main!(benches);
