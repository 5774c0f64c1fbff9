#!/usr/bin/env bash
# Kernel tuning presets for meshgate edge hosts.
#
#   scripts/tune.sh list                 presets available
#   scripts/tune.sh check PRESET         every key: current value, preset value, ok/differs (exit 1 if any differs)
#   scripts/tune.sh diff PRESET          only the keys that differ
#   scripts/tune.sh apply PRESET         set them now and persist in /etc/sysctl.d (root)
#
# Presets live in scripts/sysctl/PRESET.conf, one key per line, each with a
# comment saying why. check and diff only read /proc/sys.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$here/sysctl"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 64; }

preset_file() {
  local f="$dir/$1.conf"
  [ -f "$f" ] || { echo "tune.sh: no preset named '$1' (see: tune.sh list)" >&2; exit 64; }
  echo "$f"
}

# Prints "key<TAB>value" for each setting of a preset.
settings() {
  awk -F'=' '/^[[:space:]]*(#|$)/ { next } {
    key = $1; sub(/^[[:space:]]+/, "", key); sub(/[[:space:]]+$/, "", key)
    val = substr($0, index($0, "=") + 1); gsub(/[[:space:]]+/, " ", val); sub(/^ /, "", val); sub(/ $/, "", val)
    printf "%s\t%s\n", key, val }' "$1"
}

current() {
  local path="/proc/sys/${1//.//}"
  if [ -r "$path" ]; then tr -s '\t ' '  ' < "$path" | sed 's/ $//'; else echo "(absent)"; fi
}

compare() { # mode: check|diff
  local mode="$1" file; file="$(preset_file "$2")"
  local differ=0
  if [ "$mode" = check ]; then printf '%-36s %-28s %-28s %s\n' KEY CURRENT PRESET STATE; fi
  while IFS=$'\t' read -r key want; do
    have="$(current "$key")"
    if [ "$have" = "$want" ]; then state=ok; else state=differs; differ=1; fi
    if [ "$mode" = check ] || [ "$state" = differs ]; then
      printf '%-36s %-28s %-28s %s\n' "$key" "$have" "$want" "$state"
    fi
  done < <(settings "$file")
  return "$differ"
}

cmd="${1:-}"; [ -n "$cmd" ] || usage
case "$cmd" in
  list) for f in "$dir"/*.conf; do n="$(basename "$f" .conf)"; printf '%-16s %s\n' "$n" "$(sed -n '1s/^# //p' "$f")"; done ;;
  check) [ $# -eq 2 ] || usage; compare check "$2" ;;
  diff) [ $# -eq 2 ] || usage; compare diff "$2" || true ;;
  apply)
    [ $# -eq 2 ] || usage
    file="$(preset_file "$2")"
    [ "$(id -u)" -eq 0 ] || { echo "tune.sh: apply needs root" >&2; exit 77; }
    failed=0
    while IFS=$'\t' read -r key want; do
      if ! sysctl -q -w "$key=$want" >/dev/null 2>&1; then
        echo "tune.sh: could not set $key=$want (read-only here, or absent on this kernel)" >&2
        failed=1
      fi
    done < <(settings "$file")
    if [ -d /etc/sysctl.d ] && [ -w /etc/sysctl.d ]; then
      cp "$file" "/etc/sysctl.d/60-meshgate-$2.conf"
      echo "persisted in /etc/sysctl.d/60-meshgate-$2.conf"
    fi
    compare diff "$2" || true
    exit "$failed"
    ;;
  *) usage ;;
esac
