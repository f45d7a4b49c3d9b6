#!/usr/bin/env bash
# Snapshot into and restore from an object store over a link (issue 26): the toolchain snapshotted
# into a local directory, into `s3://` on a loopback S3 server, and by `restic backup` into the
# same server; then restored from it by cairn and by restic. Each with no added delay and with
# 20 ms more round trip, side by side in one run.
#
# usage: benches/s3_snapshot.sh CORPUS_DIR WORK_DIR
#   CORPUS_DIR holds two versions of one tree, v1/ and v2/ (two Rust toolchains). WORK_DIR is
#   scratch space, removed first (about 2x the corpus; moto's spill files go to TMPDIR).
# env:   CAIRN     the cairn binary (default target/release/cairn)
#        DELAYS    added round trips in ms (default "0 20"), through benches/delay_proxy.rs
#        OUT_DIR   where restores write (default WORK_DIR; /dev/shm takes the disk's writeback
#                  out of the restore timings)
# needs: moto_server and boto3 (pip install 'moto[server]'), python3; restic (skipped if absent).
#
# Per delay, timed (wall seconds, peak RSS, requests and PUTs the server saw):
#   local      cairn --repo WORK/local-D snapshot v1, then v2 (a fresh repository)
#   s3         cairn --repo s3://bench/cairn-D snapshot v1, then v2 (created by the first)
#   restic     restic -r s3:.../restic-D backup v1, then v2 (initialised untimed)
#   restore    cairn --repo s3://bench/cairn-D restore latest, and restic restore latest, each
#              with an empty cache directory, compared byte for byte with v2
# The summary prints the targets' ratios: s3 snapshot at most 1.5x the local one, at least 3x
# faster than restic's backup, restore at least 3x faster than restic's. Exits 1 if any step
# failed or a restore differs.
set -euo pipefail
CORPUS=$(realpath "${1:?corpus dir with v1/ and v2/}")
WORK=$(realpath -m "${2:?work dir}")
CAIRN=$(realpath -m "${CAIRN:-target/release/cairn}")
DELAYS=${DELAYS:-0 20}
HERE=$(dirname "$(realpath "$0")")
[[ -x $CAIRN ]] || { echo "no cairn binary at $CAIRN (cargo build --release, or CAIRN=...)"; exit 2; }
for v in v1 v2; do
  # restic stores a symlink given as `v1/` as the link itself (0.14: four PUTs, nothing backed up).
  [[ -L $CORPUS/$v ]] && { echo "$CORPUS/$v is a symlink: restic would back up the link; bind-mount it" \
    "(mount --bind TARGET $CORPUS/$v) or copy the tree"; exit 2; }
done
rm -rf "$WORK"; mkdir -p "$WORK"
RESULTS=$WORK/results.tsv; : >"$RESULTS"
FAILED=0
HAVE_RESTIC=0; command -v restic >/dev/null && HAVE_RESTIC=1

. "$HERE/s3_server.sh"   # moto_server, the delaying proxies, requests, objects, timed, compare
STEPS=0
report() { # delay step [note]
  printf '  %-4s ms %-14s %8.2f s %5d MiB rss %6d requests %5d PUTs  %s\n' "$1" "$2" "$T" "$M" "$R" "$PUT" "${3:-}"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$T" "$M" "$R" "$PUT" >>"$RESULTS"
}

echo "cairn: $CAIRN ($("$CAIRN" --version)); restic: $(restic version 2>/dev/null | cut -d' ' -f2 || echo absent)"
echo "delays (added round trip, ms): $DELAYS; $(nproc) cores; corpus v1 $(du -sm "$CORPUS/v1/" | cut -f1) MiB," \
  "v2 $(du -sm "$CORPUS/v2/" | cut -f1) MiB"
for d in $DELAYS; do
  E=${ENDPOINT[$d]}; OUT=${OUT_DIR:-$WORK}/restore
  for v in v1 v2; do
    timed "local $v" "'$CAIRN' --quiet --repo '$WORK/local-$d' snapshot '$CORPUS/$v/'" && report "$d" "local $v"
  done
  rm -rf "$WORK/local-$d"
  for v in v1 v2; do
    timed "s3 $v" "AWS_ENDPOINT_URL=$E '$CAIRN' --quiet --repo s3://bench/cairn-$d snapshot '$CORPUS/$v/'" &&
      report "$d" "s3 $v"
  done
  if [[ $HAVE_RESTIC == 1 ]]; then
    restic -q -r "s3:$DIRECT/bench/restic-$d" init >/dev/null
    for v in v1 v2; do
      timed "restic $v" "restic -q -r s3:$E/bench/restic-$d backup '$CORPUS/$v/' >/dev/null" && report "$d" "restic $v"
    done
  fi
  rm -rf "$OUT"
  if timed "s3 restore" "AWS_ENDPOINT_URL=$E '$CAIRN' --quiet --repo s3://bench/cairn-$d restore latest --target '$OUT'"; then
    compare "$CORPUS/v2/" "$OUT"; report "$d" "s3 restore" "$SAME"
  fi
  rm -rf "$OUT"
  if [[ $HAVE_RESTIC == 1 ]] &&
      timed "restic restore" "restic -q -r s3:$E/bench/restic-$d restore latest --target '$OUT'"; then
    compare "$CORPUS/v2/" "$OUT$CORPUS/v2"; report "$d" "restic restore" "$SAME"   # restic adds the source's path
  fi
  rm -rf "$OUT"
done
[[ $HAVE_RESTIC == 1 ]] || echo "restic not installed: its rows are empty"

python3 - "$RESULTS" <<'PY'
import sys
steps = {}
for line in open(sys.argv[1]):
    d, step, t, m, r, p = line.rstrip("\n").split("\t")
    steps[int(d), step] = float(t)
rows = []
def ratio(name, a, b, target, met):
    if a is not None and b is not None:
        x = a / b
        rows.append((name, f"{a:.2f} / {b:.2f} = {x:.2f}x", target, "met" if met(x) else "MISSED"))
for d in sorted({k[0] for k in steps}):
    s = lambda step: steps.get((d, step))
    both = lambda who: s(f"{who} v1") + s(f"{who} v2") if s(f"{who} v1") and s(f"{who} v2") else None
    for v in ("v1", "v2"):
        ratio(f"s3 / local snapshot {v}, {d} ms", s(f"s3 {v}"), s(f"local {v}"), "<= 1.5x", lambda x: x <= 1.5)
    for v in ("v1", "v2"):
        ratio(f"restic / s3 snapshot {v}, {d} ms", s(f"restic {v}"), s(f"s3 {v}"), ">= 3x", lambda x: x >= 3)
    ratio(f"restic / s3 snapshot v1+v2, {d} ms", both("restic"), both("s3"), ">= 3x", lambda x: x >= 3)
    ratio(f"restic / cairn restore, {d} ms", s("restic restore"), s("s3 restore"), ">= 3x", lambda x: x >= 3)
print("\nsummary (one run: read as ratios)")
header = ("ratio", "measured", "target", "")
widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
for r in [header] + rows:
    print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
PY
[[ $FAILED == 0 ]] || { echo "SOME STEPS FAILED OR RESTORES DIFFER (see above)"; exit 1; }
