#!/usr/bin/env bash
# Builds the sockmap engine's BPF object, dataplane/bpf/sockmap.bpf.o, from
# dataplane/bpf/sockmap.bpf.c with Debian's clang. The object is committed:
# `cargo build` embeds it and never needs clang.
#
#   scripts/build-bpf.sh           rebuild the object in place
#   scripts/build-bpf.sh --check   rebuild into a temporary file and exit 1
#                                  if it differs from the committed object
#
# Reproducible: fixed flags, paths relative to the repository (the debug
# information names the source and the compilation directory as "."),
# symbols kept (the loader finds the program, the maps and BUDGET by name).
# -g is needed for the BTF the loader uses to relocate the kernel fields the
# program reads (CO-RE) and to set BUDGET.
# Needs: clang and libbpf-dev (apt-get install -y clang libbpf-dev).
set -euo pipefail
cd "$(dirname "$0")/.."

src=dataplane/bpf/sockmap.bpf.c
obj=dataplane/bpf/sockmap.bpf.o
arch_include=/usr/include/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: scripts/build-bpf.sh [--check]" >&2; exit 64 ;;
esac
command -v clang >/dev/null || { echo "build-bpf.sh: clang not found (apt-get install -y clang libbpf-dev)" >&2; exit 69; }

out=$obj
if [ "$check" = 1 ]; then
  out=$(mktemp --suffix=.o)
  trap 'rm -f "$out"' EXIT
fi
clang -O2 -g -target bpf -mcpu=v2 -I"$arch_include" -fno-ident \
  -fdebug-compilation-dir=. -fdebug-prefix-map="$PWD"=. -c "$src" -o "$out"

if [ "$check" = 1 ]; then
  if cmp -s "$out" "$obj"; then
    echo "build-bpf.sh: $obj matches its source"
  else
    echo "build-bpf.sh: $obj differs from a rebuild of $src; run scripts/build-bpf.sh and commit the object" >&2
    llvm-objdump -d "$obj" > "$out.committed.txt" 2>&1 || true
    llvm-objdump -d "$out" > "$out.rebuilt.txt" 2>&1 || true
    diff "$out.committed.txt" "$out.rebuilt.txt" >&2 || true
    rm -f "$out.committed.txt" "$out.rebuilt.txt"
    exit 1
  fi
fi
