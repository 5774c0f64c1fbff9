#!/usr/bin/env bash
# Builds the meshgate Debian package with dpkg-deb (nothing else to install).
#
#   scripts/build-deb.sh [--bin-dir DIR] [--out DIR] [--version VERSION] [--compress TYPE]
#
#   --bin-dir DIR   where meshgate and meshgate-agent are (default target/release;
#                   build them first: cargo build --release -p meshgate -p meshgate-agent)
#   --out DIR       where the .deb goes (default target/debian)
#   --version V     package version (default: the workspace's, from Cargo.toml)
#   --compress T    xz (default), gzip, zstd or none (none is fast, for tests)
#
# Prints the path of the package. Contents: /usr/bin/{meshgate,meshgate-agent},
# /lib/systemd/system/{meshgate,meshgate-agent}.service, /etc/meshgate/meshgate.env
# (a conffile), /usr/sbin/meshgate-tune with /usr/share/meshgate/{tune.sh,sysctl/},
# /usr/share/doc/meshgate/{README.md,copyright}; maintainer scripts and the
# control template come from packaging/deb/.
# Exit codes: 0 built, 64 bad flag, 66 a binary or input file is missing,
# 69 dpkg-deb or dpkg missing.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
pkg="$repo/packaging/deb"

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 64; }

bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
out_dir="$repo/target/debian"
version=""
compress="xz"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) [ $# -ge 2 ] || usage; bin_dir="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || usage; out_dir="$2"; shift 2 ;;
    --version) [ $# -ge 2 ] || usage; version="$2"; shift 2 ;;
    --compress) [ $# -ge 2 ] || usage; compress="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "build-deb.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case "$compress" in
  xz|gzip|zstd|none) ;;
  *) echo "build-deb.sh: --compress: '$compress' is not one of xz, gzip, zstd, none" >&2; exit 64 ;;
esac

for tool in dpkg-deb dpkg; do
  command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool is missing (apt-get install dpkg)" >&2; exit 69; }
done
for b in meshgate meshgate-agent; do
  [ -x "$bin_dir/$b" ] || {
    echo "build-deb.sh: --bin-dir: no executable $bin_dir/$b (cargo build --release -p meshgate -p meshgate-agent)" >&2
    exit 66
  }
done
for f in control.in postinst prerm postrm meshgate.env meshgate-tune; do
  [ -f "$pkg/$f" ] || { echo "build-deb.sh: $pkg/$f is missing" >&2; exit 66; }
done

if [ -z "$version" ]; then
  # The first `version = "..."` of the workspace manifest ([workspace.package]).
  version="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml" | head -n1)"
  [ -n "$version" ] || { echo "build-deb.sh: no version in $repo/Cargo.toml; pass --version" >&2; exit 66; }
fi
case "$version" in
  [0-9]*) ;;
  *) echo "build-deb.sh: --version: '$version' must start with a digit (Debian policy)" >&2; exit 64 ;;
esac
arch="$(dpkg --print-architecture)"

# libc6 at least as new as the newest GLIBC_x.y symbol version the binaries use.
libc="libc6"
if command -v objdump >/dev/null; then
  glibc="$(objdump -T "$bin_dir/meshgate" "$bin_dir/meshgate-agent" 2>/dev/null \
    | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1 || true)"
  [ -z "$glibc" ] || libc="libc6 (>= $glibc)"
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/usr/sbin" "$root/lib/systemd/system" \
  "$root/etc/meshgate" "$root/usr/share/meshgate/sysctl" "$root/usr/share/doc/meshgate"

install -m 0755 "$bin_dir/meshgate" "$bin_dir/meshgate-agent" "$root/usr/bin/"
install -m 0644 "$repo/scripts/meshgate.service" "$repo/scripts/meshgate-agent.service" \
  "$root/lib/systemd/system/"
# Read by systemd (root) only; it may hold CONSUL_HTTP_TOKEN.
install -m 0640 "$pkg/meshgate.env" "$root/etc/meshgate/meshgate.env"
install -m 0755 "$repo/scripts/tune.sh" "$root/usr/share/meshgate/tune.sh"
install -m 0644 "$repo"/scripts/sysctl/*.conf "$root/usr/share/meshgate/sysctl/"
install -m 0755 "$pkg/meshgate-tune" "$root/usr/sbin/meshgate-tune"
install -m 0644 "$repo/README.md" "$root/usr/share/doc/meshgate/README.md"
install -m 0644 "$repo/LICENSE" "$root/usr/share/doc/meshgate/copyright"

install -m 0755 "$pkg/postinst" "$pkg/prerm" "$pkg/postrm" "$root/DEBIAN/"
echo /etc/meshgate/meshgate.env > "$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@LIBC@/$libc/" \
  "$pkg/control.in" > "$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/control"
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
  > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

mkdir -p "$out_dir"
deb="$out_dir/meshgate_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
