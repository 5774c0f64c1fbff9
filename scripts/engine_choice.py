#!/usr/bin/env python3
"""Side-by-side run of meshgate's forwarding engines, to choose the default.

Runs meshgate-bench (bulk, cps, rr at a fixed rate) against one meshgate per
engine variant, round-robin over the variants in every repetition so that
all of them share the machine's noise alike, and prints the median (min-max)
of each figure per variant: CPU seconds per GiB and Gbit/s (bulk), CPU ms per
1,000 connections and connections/s (cps), and the p50/p99/p99.9 of the
fixed-rate ping-pong (rr). Loopback only; finishes by itself (about 4 minutes
with the defaults).

    cargo build --release -p meshgate -p meshgate-bench
    scripts/engine_choice.py [--reps 3] [--secs 3] [--rate 4000] [--only bulk,cps,rr]
        [--variants splice,ring-splice,copy,epoll-splice,splice@64k,...]

A variant is a --forward value, optionally `epoll-` in front (epoll engine)
and `@SIZE` behind (--pipe-size: 64k, 256k, 1m, 4m); `b:` in front runs it
with the binary given by `--other-meshgate` (to compare two builds).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHGATE = os.path.join(ROOT, "target", "release", "meshgate")
BENCH = os.path.join(ROOT, "target", "release", "meshgate-bench")
SNI = "bench.local"
HOST = "127.0.9.20"
OTHER = None
SIZES = {"64k": 64 << 10, "256k": 256 << 10, "1m": 1 << 20, "4m": 4 << 20}


def parse_variant(v):
    binary = MESHGATE
    if v.startswith("b:"):
        binary, v = OTHER, v[2:]
    engine = "uring"
    if v.startswith("epoll-"):
        engine, v = "epoll", v[len("epoll-"):]
    size = None
    if "@" in v:
        v, s = v.split("@", 1)
        size = SIZES[s]
    return binary, v, engine, size


def start_gateway(variant, port, backend_port, workdir):
    binary, forward, engine, size = parse_variant(variant)
    routes = os.path.join(workdir, f"routes-{port}.toml")
    with open(routes, "w") as f:
        f.write(f'version = 1\n[[routes]]\nsni = "{SNI}"\nendpoints = ["{HOST}:{backend_port}"]\n')
    log = open(os.path.join(workdir, f"meshgate-{port}.log"), "w+")
    cmd = [binary, "serve", "--listen", f"{HOST}:{port}", "--routes", routes,
           "--forward", forward, "--engine", engine, "--admin", "none", "--shards", "2",
           "--drain-timeout-secs", "1"]
    if size:
        cmd += ["--pipe-size", str(size)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 15
    while time.time() < deadline:
        log.seek(0)
        if "listening" in log.read():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    log.seek(0)
    sys.exit(f"meshgate ({variant}) did not start:\n{log.read()}")


def run_bench(mode, port, backend_port, pid, args):
    cmd = [BENCH, mode, "--target", f"{HOST}:{port}", "--sni", SNI,
           "--backend-listen", f"{HOST}:{backend_port}", "--proxy-pid", str(pid), "-q",
           "-d", str(args.secs)]
    if mode == "bulk":
        cmd += ["-c", "4", "--warmup-secs", "0.5"]
    elif mode == "cps":
        cmd += ["-c", "32"]
    elif mode == "rr":
        cmd += ["-c", "32", "--rate", str(args.rate), "--warmup-secs", "0.5"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.secs + 60)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        sys.exit(f"meshgate-bench {mode} failed: {out.stderr}")


def figures(mode, r):
    p = r.get("proxy") or {}
    if mode == "bulk":
        return {"cpu_s_per_gib": p.get("cpu_secs_per_gib"),
                "gbit_s": r["throughput"]["gbit_per_sec"]}
    if mode == "cps":
        return {"cpu_ms_per_1k": p.get("cpu_ms_per_1k_conns"),
                "conn_s": r["throughput"]["connections_per_sec"]}
    lat = r.get("latency_us") or {}
    return {"p50_us": lat.get("p50"), "p99_us": lat.get("p99"), "p999_us": lat.get("p999"),
            "errors": r["errors"]["total"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=4000)
    ap.add_argument("--only", default="bulk,cps,rr")
    ap.add_argument("--variants", default="splice,ring-splice,copy")
    ap.add_argument("--json", help="also write every sample here")
    ap.add_argument("--other-meshgate", help="binary for `b:` variants")
    args = ap.parse_args()
    global OTHER
    OTHER = args.other_meshgate
    variants = args.variants.split(",")
    modes = args.only.split(",")
    samples = {}
    with tempfile.TemporaryDirectory() as workdir:
        port = 18600
        for rep in range(args.reps):
            for mode in modes:
                for variant in variants:
                    port += 1
                    gw = start_gateway(variant, port, port + 1000, workdir)
                    try:
                        r = run_bench(mode, port, port + 1000, gw.pid, args)
                    finally:
                        gw.send_signal(signal.SIGTERM)
                        try:
                            gw.wait(10)
                        except subprocess.TimeoutExpired:
                            gw.kill()
                    f = figures(mode, r)
                    samples.setdefault((mode, variant), []).append(f)
                    print(f"rep {rep + 1} {mode:4} {variant:14} {f}", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({f"{m} {v}": s for (m, v), s in samples.items()}, out, indent=1)
    print(f"\nmedian (min-max) of {args.reps} repetitions, {args.secs} s each; "
          f"rr at {args.rate:g} requests/s over 32 connections")
    for mode in modes:
        keys = list(samples[(mode, variants[0])][0].keys())
        print(f"\n{mode}: " + " | ".join(keys))
        for variant in variants:
            cells = []
            for k in keys:
                vals = [s[k] for s in samples[(mode, variant)] if s[k] is not None]
                if not vals:
                    cells.append("-")
                    continue
                cells.append(f"{statistics.median(vals):.3g} ({min(vals):.3g}-{max(vals):.3g})")
            print(f"  {variant:14} " + " | ".join(cells))


if __name__ == "__main__":
    main()
