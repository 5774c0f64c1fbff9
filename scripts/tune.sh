#!/usr/bin/env bash
# Kernel tuning presets for meshgate edge hosts.
#
# Usage:
#   scripts/tune.sh list            the presets, one line each
#   scripts/tune.sh check PRESET    every key: host value, preset value, value after apply, state
#                                   (ok, kept, raise, absent, skipped); exit 1 if apply would change any
#   scripts/tune.sh diff PRESET     only the keys where host and preset differ, and what apply does
#   scripts/tune.sh apply PRESET    raise the keys now and persist the result (root)
#   scripts/tune.sh -h | --help     this text
#
# A preset never lowers the host. Each key is merged with the host's current value:
#   most keys           higher is tuned: max(host, preset), per field for multi-value keys
#                       (tcp_rmem and tcp_wmem "min default max": each field the larger)
#   ip_local_port_range a wider range is higher: the lower start and the higher end
#   ip_local_reserved_ports
#                       a port list: the union of the host's ports and the preset's
#   tcp_mem             pages, per field the larger; the preset's fields are first scaled so
#                       their max is at most a quarter of MemTotal (a small host keeps its RAM)
#   pipe-user-pages-*   as most keys, but 0 (no limit) is the highest value and is kept
#   tcp_fin_timeout,    lower is tuned: min(host, preset), so a host with a shorter timeout,
#   tcp_slow_start_after_idle   or slow start already off, keeps it
#   tcp_fastopen        a bit mask: host bits | preset bits
#   tcp_tw_reuse        ordered 0 (off) < 2 (loopback only, the default) < 1 (all)
#   tcp_congestion_control, default_qdisc
#                       a mode: set only while the host has the kernel default
#                       (cubic or reno; pfifo_fast or fq_codel), another choice is kept
# A key this kernel lacks is reported as absent and skipped; it is not an error.
# apply writes only the keys that change, then writes every merged value it could set to
# /etc/sysctl.d/60-meshgate.conf: one file whichever preset was applied last (applying
# another preset replaces it; older 60-meshgate-PRESET.conf files are removed), holding
# the values now in effect, so a reboot neither undoes the preset nor lowers a kept value.
# Running apply again changes nothing.
#
# Exit codes: 0 done (check: nothing to change); 1 check found keys to change, or apply
# could not set or persist a key; 64 bad usage or unknown preset; 65 malformed preset line;
# 77 apply on /proc/sys without root.
#
# Environment, for tests and dry runs:
#   MESHGATE_SYSCTL_ROOT  tree read and written instead of /proc/sys, laid out the same way
#                         (net/ipv4/tcp_rmem); MemTotal comes from the meminfo file beside it
#                         (/proc/meminfo). apply writes its files directly; root is needed only
#                         for /proc/sys.
#   MESHGATE_SYSCTL_DIR   where apply persists, instead of /etc/sysctl.d
#
# Presets live in scripts/sysctl/PRESET.conf, one "key = value" a line, each with a
# comment saying why. check and diff only read.
set -euo pipefail
shopt -s extglob
export LC_ALL=C
here="$(cd "$(dirname "$0")" && pwd)"
dir="$here/sysctl"
sysroot="${MESHGATE_SYSCTL_ROOT:-/proc/sys}"
sysctl_d="${MESHGATE_SYSCTL_DIR:-/etc/sysctl.d}"
persisted="60-meshgate.conf"

# The header above, without the comment marks.
usage_text() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
usage_error() { echo "tune.sh: $1" >&2; usage_text >&2; exit 64; }

presets() { for f in "$dir"/*.conf; do [ -f "$f" ] && basename "$f" .conf; done; }

preset_file() {
  local f="$dir/$1.conf"
  if [[ ! $1 =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] || [ ! -f "$f" ]; then
    echo "tune.sh: no preset named '$1'; available: $(presets | paste -sd' ' -)" >&2
    exit 64
  fi
  echo "$f"
}

# Prints "key<TAB>value" for each setting of a preset; a malformed line exits 65.
settings() {
  awk '/^[[:space:]]*(#|$)/ { next }
    !/=/ { printf "tune.sh: %s:%d: expected \"key = value\": %s\n", FILENAME, FNR, $0 > "/dev/stderr"; bad = 1; exit }
    {
      key = substr($0, 1, index($0, "=") - 1); gsub(/^[[:space:]]+|[[:space:]]+$/, "", key)
      val = substr($0, index($0, "=") + 1); gsub(/[[:space:]]+/, " ", val); gsub(/^ | $/, "", val)
      if (key !~ /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/ || key ~ /\.\./ || val == "") {
        printf "tune.sh: %s:%d: bad key or empty value: %s\n", FILENAME, FNR, $0 > "/dev/stderr"; bad = 1; exit
      }
      printf "%s\t%s\n", key, val
    }
    END { exit bad ? 65 : 0 }' "$1"
}

path_of() { echo "$sysroot/${1//.//}"; }

# The host's value with fields separated by one space; fails if the key is absent or unreadable.
current() {
  local path; path="$(path_of "$1")"
  [ -f "$path" ] && [ -r "$path" ] || return 1
  tr -s '\t ' '  ' < "$path" | sed 's/^ //; s/ $//'
}

# How a key merges with the host's value (see the header).
rule() {
  case "$1" in
    net.ipv4.ip_local_port_range) echo range ;;
    net.ipv4.ip_local_reserved_ports) echo ports ;;
    net.ipv4.tcp_mem) echo memory ;;
    fs.pipe-user-pages-soft|fs.pipe-user-pages-hard) echo unlimited0 ;;
    net.ipv4.tcp_fin_timeout|net.ipv4.tcp_slow_start_after_idle) echo lower ;;
    net.ipv4.tcp_fastopen) echo bits ;;
    net.ipv4.tcp_tw_reuse) echo "order 0 2 1" ;;
    net.ipv4.tcp_congestion_control) echo "mode cubic reno" ;;
    net.core.default_qdisc) echo "mode pfifo_fast fq_codel" ;;
    *) echo higher ;;
  esac
}

is_int() { [[ $1 =~ ^-?[0-9]+$ ]]; }

# gt A B: A > B for decimal integers of any length (fs.file-max is 2^63-1).
gt() {
  local a="$1" b="$2"
  if [[ $a == -* && $b == -* ]]; then gt "${b#-}" "${a#-}"; return; fi
  if [[ $a == -* ]]; then return 1; fi
  if [[ $b == -* ]]; then return 0; fi
  a="${a##+(0)}"; a="${a:-0}"; b="${b##+(0)}"; b="${b:-0}"
  if [ "${#a}" -ne "${#b}" ]; then [ "${#a}" -gt "${#b}" ]; return; fi
  [[ $a > $b ]]
}

# MemTotal in pages of this kernel, from the meminfo beside the sysctl root.
mem_pages() {
  local kb
  kb="$(awk '$1 == "MemTotal:" { print $2 }' "$(dirname "$sysroot")/meminfo" 2>/dev/null)" || return 1
  is_int "$kb" || return 1
  echo $(( kb * 1024 / $(getconf PAGESIZE) ))
}

# ports_union LIST...: the union of port lists as the kernel prints them ("8300-8302,8443";
# "(none)" or empty for none), merged and sorted the same way; fails on anything else.
ports_union() {
  local list item a b pairs=() out=() cur_a=-1 cur_b=-1
  for list in "$@"; do
    [ "$list" = "(none)" ] && continue
    IFS=, read -r -a items <<< "$list"
    for item in "${items[@]}"; do
      if [[ $item =~ ^([0-9]+)-([0-9]+)$ ]]; then a="${BASH_REMATCH[1]}"; b="${BASH_REMATCH[2]}"
      elif [[ $item =~ ^[0-9]+$ ]]; then a="$item"; b="$item"
      else return 1; fi
      a=$((10#$a)); b=$((10#$b))
      [ "$a" -le "$b" ] && [ "$b" -le 65535 ] || return 1
      pairs+=("$a $b")
    done
  done
  while read -r a b; do
    [ -n "$a" ] || continue
    if [ "$cur_a" -ge 0 ] && [ "$a" -le $((cur_b + 1)) ]; then
      [ "$b" -gt "$cur_b" ] && cur_b="$b"
      continue
    fi
    [ "$cur_a" -ge 0 ] && out+=("$cur_a-$cur_b")
    cur_a="$a"; cur_b="$b"
  done < <(printf '%s\n' "${pairs[@]}" | sort -n -k1,1 -k2,2)
  [ "$cur_a" -ge 0 ] && out+=("$cur_a-$cur_b")
  local joined=""
  for item in "${out[@]}"; do
    a="${item%-*}"; b="${item#*-}"
    [ "$a" = "$b" ] && item="$a"
    joined="${joined:+$joined,}$item"
  done
  echo "${joined:-(none)}"
}

# merge KEY HOST PRESET: prints the value apply sets; fails with the reason on stdout when the
# key cannot be merged (then it is skipped).
merge() {
  local key="$1" host="$2" want="$3" r i out=()
  read -r -a r <<< "$(rule "$key")"
  local -a h w
  read -r -a h <<< "$host"; read -r -a w <<< "$want"
  case "${r[0]}" in
    ports)
      ports_union "$host" "$want" || { echo "not a list of ports: $host + $want"; return 1; }
      return ;;
    mode)
      for i in "${r[@]:1}"; do [ "$host" = "$i" ] && { echo "$want"; return; }; done
      echo "$host"; return ;;
    order)
      local hi=-1 wi=-1 n=0
      for i in "${r[@]:1}"; do [ "$host" = "$i" ] && hi=$n; [ "$want" = "$i" ] && wi=$n; n=$((n + 1)); done
      [ "$wi" -ge 0 ] || { echo "preset value $want is not one of: ${r[*]:1}"; return 1; }
      if [ "$hi" -ge "$wi" ] || [ "$hi" -lt 0 ]; then echo "$host"; else echo "$want"; fi
      return ;;
  esac
  [ "${#h[@]}" -eq "${#w[@]}" ] || { echo "host has ${#h[@]} fields, preset ${#w[@]}"; return 1; }
  for i in "${h[@]}" "${w[@]}"; do is_int "$i" || { echo "not a number: $i"; return 1; }; done
  case "${r[0]}" in
    range)
      [ "${#w[@]}" -eq 2 ] || { echo "a range has 2 fields"; return 1; }
      if gt "${h[0]}" "${w[0]}"; then out+=("${w[0]}"); else out+=("${h[0]}"); fi
      if gt "${h[1]}" "${w[1]}"; then out+=("${h[1]}"); else out+=("${w[1]}"); fi ;;
    bits)
      echo $(( host | want )); return ;;
    lower)
      for i in "${!w[@]}"; do
        if gt "${h[$i]}" "${w[$i]}"; then out+=("${w[$i]}"); else out+=("${h[$i]}"); fi
      done ;;
    unlimited0)
      if [ "$host" = 0 ] || gt "$host" "$want"; then echo "$host"; else echo "$want"; fi
      return ;;
    memory)
      local cap top="${w[$(( ${#w[@]} - 1 ))]}"
      cap="$(mem_pages)" || { echo "cannot read MemTotal to size it"; return 1; }
      cap=$(( cap / 4 ))
      if gt "$top" "$cap"; then
        for i in "${!w[@]}"; do w[$i]=$(( w[i] * cap / top )); done
      fi
      for i in "${!w[@]}"; do
        if gt "${h[$i]}" "${w[$i]}"; then out+=("${h[$i]}"); else out+=("${w[$i]}"); fi
      done ;;
    *)
      for i in "${!w[@]}"; do
        if gt "${h[$i]}" "${w[$i]}"; then out+=("${h[$i]}"); else out+=("${w[$i]}"); fi
      done ;;
  esac
  echo "${out[*]}"
}

# plan PRESET_FILE: prints "key<TAB>host<TAB>preset<TAB>target<TAB>state" per key, where state is
# ok (host has the preset value), kept (host has something higher), raise (apply changes it),
# absent (the kernel lacks the key; target empty) or skipped (target holds the reason).
plan() {
  local key want have target state
  while IFS=$'\t' read -r key want; do
    if ! have="$(current "$key")"; then
      printf '%s\t-\t%s\t-\tabsent\n' "$key" "$want"; continue
    fi
    # An empty value (no reserved ports) would vanish between tabs.
    [ -n "$have" ] || have="(none)"
    if ! target="$(merge "$key" "$have" "$want")"; then
      printf '%s\t%s\t%s\t%s\tskipped\n' "$key" "$have" "$want" "$target"; continue
    fi
    if [ "$target" != "$have" ]; then state=raise
    elif [ "$have" = "$want" ]; then state=ok
    else state=kept; fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$key" "$have" "$want" "$target" "$state"
  done < <(settings "$1")
  wait $! || exit $?
}

# One human line for a planned key that differs from the preset.
describe() { # key have want target state [verb]
  local key="$1" have="$2" want="$3" target="$4" state="$5" note=""
  [ "$target" = "$want" ] || note=" (preset $want)"
  case "$state" in
    raise) echo "$key: $have -> $target$note" ;;
    kept) echo "$key: kept (host has $have)" ;;
    absent) echo "$key: absent on this kernel, skipped" ;;
    skipped) echo "$key: skipped, $target (host has $have)" ;;
  esac
}

cmd_check() {
  local file rows key have want target state changes=0
  file="$(preset_file "$1")"; rows="$(plan "$file")"
  printf '%-36s %-24s %-24s %-24s %s\n' KEY HOST PRESET AFTER-APPLY STATE
  while IFS=$'\t' read -r key have want target state; do
    [ "$state" = raise ] && changes=$((changes + 1))
    case "$state" in absent|skipped) target=- ;; esac
    printf '%-36s %-24s %-24s %-24s %s\n' "$key" "$have" "$want" "$target" "$state"
  done <<< "$rows"
  [ "$changes" -eq 0 ]
}

cmd_diff() {
  local file rows key have want target state any=0
  file="$(preset_file "$1")"; rows="$(plan "$file")"
  while IFS=$'\t' read -r key have want target state; do
    [ "$state" = ok ] && continue
    any=1; describe "$key" "$have" "$want" "$target" "$state"
  done <<< "$rows"
  [ "$any" = 1 ] || echo "no differences: the host has every value of $1"
}

cmd_apply() {
  local name="$1" file rows key have want target state now failed=0 changed=0 kept=()
  file="$(preset_file "$name")"; rows="$(plan "$file")"
  if [ "$sysroot" = /proc/sys ] && [ "$(id -u)" -ne 0 ]; then
    echo "tune.sh: apply writes /proc/sys and needs root (try: sudo $0 apply $name)" >&2
    exit 77
  fi
  while IFS=$'\t' read -r key have want target state; do
    now=""
    case "$state" in
      ok|kept) kept+=("$key = $target") ;;
      absent|skipped) describe "$key" "$have" "$want" "$target" "$state" >&2 ;;
      raise)
        if ( printf '%s\n' "$target" > "$(path_of "$key")" ) 2>/dev/null \
          && now="$(current "$key")" && [ "$now" = "$target" ]; then
          describe "$key" "$have" "$want" "$target" "$state"
          kept+=("$key = $target"); changed=$((changed + 1))
        else
          echo "tune.sh: could not set $key = $target (host keeps ${now:-$have}; read-only here, or refused by the kernel)" >&2
          failed=1
        fi ;;
    esac
  done <<< "$rows"
  [ "$changed" -gt 0 ] || echo "nothing to change: the host has every value of $name or higher"

  if [ ! -d "$sysctl_d" ] || [ ! -w "$sysctl_d" ]; then
    echo "tune.sh: not persisted: $sysctl_d is missing or not writable; the values last until reboot" >&2
    exit 1
  fi
  local dest="$sysctl_d/$persisted" old
  tmp="$(mktemp "$sysctl_d/.60-meshgate.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  {
    echo "# Written by tune.sh apply $name, from $file:"
    echo "# the preset's values, raised to the host's where the host had more."
    echo "# Re-run tune.sh apply to change it."
    printf '%s\n' "${kept[@]}"
  } > "$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$dest"
  for old in "$sysctl_d"/60-meshgate-*.conf; do
    [ -f "$old" ] || continue
    rm -f "$old"; echo "removed $old (replaced by $dest)"
  done
  echo "persisted in $dest"
  return "$failed"
}

cmd="${1:-}"
case "$cmd" in
  -h|--help|help) [ $# -eq 1 ] || usage_error "$cmd takes no arguments"; usage_text; exit 0 ;;
  list) [ $# -eq 1 ] || usage_error "list takes no arguments"
    for f in "$dir"/*.conf; do
      n="$(basename "$f" .conf)"
      printf '%-16s %s\n' "$n" "$(sed -n "1s/^# *$n: *//p" "$f")"
    done ;;
  check|diff|apply) [ $# -eq 2 ] || usage_error "$cmd takes one PRESET"; "cmd_$cmd" "$2" ;;
  "") usage_error "a command is needed" ;;
  *) usage_error "unknown command '$cmd'" ;;
esac
