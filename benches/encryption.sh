#!/usr/bin/env bash
# What encryption costs: cairn encrypted (the default), cairn --encryption none, and restic (which
# always encrypts), in one run on the same data: snapshot of v1, then restore.
#
# usage: benches/encryption.sh CORPUS_DIR WORK_DIR [RUNS]
#   CORPUS_DIR holds v1/ (a Rust toolchain, as for ../shared/bench/peers.sh); WORK_DIR is scratch
#   space (restores go to WORK_DIR too). Each tool runs RUNS times (default 3), interleaved;
#   the median wall time and peak RSS are printed, with ratios to cairn --encryption none.
set -euo pipefail
V1=$(realpath "${1:?corpus dir with v1/}/v1"); WORK=$(realpath -m "${2:?work dir}"); RUNS=${3:-3}
CAIRN=$(realpath -m "${CAIRN:-target/release/cairn}")
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
rm -rf "$WORK"; mkdir -p "$WORK"
timed() { # label command... ; appends "seconds rss_kib" to $WORK/label
  local label=$1; shift
  /usr/bin/time -o "$WORK/t" -f '%e %M' "$@" >/dev/null 2>"$WORK/err" || { echo "$label FAILED"; tail -3 "$WORK/err"; exit 1; }
  cat "$WORK/t" >>"$WORK/$label"
}
for run in $(seq "$RUNS"); do
  for tool in cairn-aes cairn-none restic; do
    R=$WORK/repo-$tool; T=$WORK/out-$tool; rm -rf "$R" "$T"
    case $tool in
      cairn-aes)  "$CAIRN" -q --repo "$R" init >/dev/null
                  timed "$tool-snapshot" "$CAIRN" -q --repo "$R" snapshot "$V1"
                  timed "$tool-restore" "$CAIRN" -q --repo "$R" restore latest --target "$T";;
      cairn-none) "$CAIRN" -q --repo "$R" init --encryption none >/dev/null
                  timed "$tool-snapshot" "$CAIRN" -q --repo "$R" snapshot "$V1"
                  timed "$tool-restore" "$CAIRN" -q --repo "$R" restore latest --target "$T";;
      restic)     restic -q -r "$R" init >/dev/null
                  timed "$tool-snapshot" restic -q -r "$R" backup "$V1"
                  timed "$tool-restore" restic -q -r "$R" restore latest --target "$T";;
    esac
    rm -rf "$T"
  done
done
median() { sort -n -k1,1 "$WORK/$1" | awk -v n="$RUNS" 'NR == int((n + 1) / 2) { print $1, int($2 / 1024) }'; }
echo "corpus v1: $(du -sm "$V1" | cut -f1) MiB; $RUNS runs each, interleaved; $(nproc) cores"
for step in snapshot restore; do
  read -r base _ < <(median "cairn-none-$step")
  for tool in cairn-none cairn-aes restic; do
    read -r t m < <(median "$tool-$step")
    printf '%-8s %-11s %7.2f s %5d MiB   %.3fx cairn-none\n' "$step" "$tool" "$t" "$m" "$(echo "$t / $base" | bc -l)"
  done
done
