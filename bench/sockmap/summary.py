#!/usr/bin/env python3
"""Summarise bench/sockmap/run.sh's JSON lines as Markdown tables.

Each figure is the median over repetitions. "Added host CPU" is the whole
host's busy time (meshgate-bench's `host` block, /proc/stat) with the proxy
minus the same case without one (`none`), per request, per GiB or per 1,000
connections. Kernel memory per idle connection is the rise of
/proc/net/sockstat's TCP memory and of /proc/meminfo's Slab during the idle
hold, minus the same rise without a proxy, divided by the connections held.

usage: bench/sockmap/summary.py FILE
"""
import json
import statistics
import sys
from collections import defaultdict


def case_of(d):
    if d["mode"] == "rr" and d["params"].get("rate"):
        return "rr-rate"
    return d["mode"]


def get(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p)
    return d


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def main():
    runs = defaultdict(list)
    for line in open(sys.argv[1]):
        line = line.strip()
        if line:
            d = json.loads(line)
            runs[(case_of(d), d["label"])].append(d)
    targets = ["none", "sockmap", "adaptive", "splice", "copy"]

    def m(case, target, *path):
        return med(get(d, *path) for d in runs[(case, target)])

    def added(case, target, *path):
        a, b = m(case, target, *path), m(case, "none", *path)
        return None if a is None or b is None else a - b

    for case, title in [("rr", "small request/response, closed loop (32 connections)"),
                        ("rr-rate", "small request/response, paced (16 connections, 8,000 req/s)")]:
        print(f"\n{title}\n")
        print("| target | req/s | p50 µs | p99 µs | host CPU µs/request | added µs/request | added p50 µs | added p99 µs |")
        print("|---|---|---|---|---|---|---|---|")
        for t in targets:
            if not runs[(case, t)]:
                continue
            print(f"| {t} | {fmt(m(case, t, 'throughput', 'requests_per_sec'), 0)} "
                  f"| {fmt(m(case, t, 'latency_us', 'p50'))} | {fmt(m(case, t, 'latency_us', 'p99'))} "
                  f"| {fmt(m(case, t, 'host', 'busy_us_per_request'), 2)} "
                  f"| {fmt(added(case, t, 'host', 'busy_us_per_request'), 2) if t != 'none' else '–'} "
                  f"| {fmt(added(case, t, 'latency_us', 'p50')) if t != 'none' else '–'} "
                  f"| {fmt(added(case, t, 'latency_us', 'p99')) if t != 'none' else '–'} |")
    def diverted(case, t):
        shares = [get(d, "gateway", "diverted_bytes") / get(d, "gateway", "forwarded_bytes")
                  for d in runs[(case, t)]
                  if get(d, "gateway", "forwarded_bytes")]
        return None if not shares else 100 * med(shares)

    print("\nbulk download, 4 streams\n")
    print("| target | Gbit/s | host CPU s/GiB | added s/GiB | diverted to the gateway |")
    print("|---|---|---|---|---|")
    for t in targets:
        if runs[("bulk", t)]:
            share = diverted("bulk", t) if t == "sockmap" else None
            print(f"| {t} | {fmt(m('bulk', t, 'throughput', 'gbit_per_sec'), 2)} "
                  f"| {fmt(m('bulk', t, 'host', 'busy_secs_per_gib'), 3)} "
                  f"| {fmt(added('bulk', t, 'host', 'busy_secs_per_gib'), 3) if t != 'none' else '–'} "
                  f"| {fmt(share, 0) + ' %' if share is not None else '–'} |")
    print("\nchurn: connect, hello, 64-byte request and answer, close (32 workers)\n")
    print("| target | conn/s | p50 µs | host CPU ms/1,000 conns | added ms/1,000 conns |")
    print("|---|---|---|---|---|")
    for t in targets:
        if runs[("cps", t)]:
            print(f"| {t} | {fmt(m('cps', t, 'throughput', 'connections_per_sec'), 0)} "
                  f"| {fmt(m('cps', t, 'latency_us', 'p50'))} "
                  f"| {fmt(m('cps', t, 'host', 'busy_ms_per_1k_conns'), 1)} "
                  f"| {fmt(added('cps', t, 'host', 'busy_ms_per_1k_conns'), 1) if t != 'none' else '–'} |")

    def kernel_rise(d, key):
        k = d.get("kernel") or {}
        n = get(d, "idle", "established") or get(d, "params", "count") or 1
        if key == "tcp":
            return (k.get("tcp_pages_max", 0) - k.get("tcp_pages_before", 0)) * 4096 / n
        return (k.get("slab_kib_max", 0) - k.get("slab_kib_before", 0)) * 1024 / n

    print("\nidle connections (held after their hello)\n")
    print("| target | gateway RSS B/conn | kernel TCP mem B/conn (added) | slab B/conn (added) |")
    print("|---|---|---|---|")
    base_tcp = med(kernel_rise(d, "tcp") for d in runs[("idle", "none")])
    base_slab = med(kernel_rise(d, "slab") for d in runs[("idle", "none")])
    for t in targets:
        rs = runs[("idle", t)]
        if not rs:
            continue
        tcp = med(kernel_rise(d, "tcp") for d in rs)
        slab = med(kernel_rise(d, "slab") for d in rs)
        if t != "none" and base_tcp is not None:
            tcp, slab = tcp - base_tcp, slab - base_slab
        print(f"| {t} | {fmt(m('idle', t, 'idle', 'proxy', 'rss_bytes_per_connection'), 0)} "
              f"| {fmt(tcp, 0)} | {fmt(slab, 0)} |")


if __name__ == "__main__":
    main()
