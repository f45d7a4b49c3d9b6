#!/usr/bin/env bash
# Restore straight from an object store (issue 21): `cairn restore` from a loopback S3 server,
# next to pulling the same data down with `cairn sync` and restoring locally, and next to
# `restic restore` from the same server; each with no added delay and with 20 ms more round trip.
#
# usage: benches/s3_restore.sh CORPUS_DIR WORK_DIR
#   CORPUS_DIR holds two versions of one tree, v1/ and v2/ (two Rust toolchains, as for
#   ../shared/bench/peers.sh; ignored when DATASETS leaves out `corpus`). WORK_DIR is scratch
#   space, removed first (about 3x the corpus; the S3 server's spill files go to TMPDIR).
# env:   CAIRN     the cairn binary (default target/release/cairn)
#        DATASETS  which datasets, in order (default "corpus app"):
#                  corpus  v1 then v2 of CORPUS_DIR; the restore is of v2
#                  app     a 31 MiB application directory built here: a 25 MiB WAL-mode SQLite
#                          database with 4 KiB pages (APP_PAGE_SIZE), which cairn stores one
#                          chunk per page, beside 6 MiB of plain files
#        DELAYS    added round trips in ms (default "0 20"); a delay goes through
#                  benches/delay_proxy.rs, which holds every chunk half of it in each direction
#        OUT_DIR   where the restores write (default WORK_DIR); a tmpfs such as /dev/shm takes
#                  the disk's writeback out of the timings, which on a VM varies 3x run to run
# needs: moto_server and boto3 (pip install 'moto[server]'), python3; restic (skipped if absent).
#
# Per dataset, not timed: snapshot the versions into a local cairn repository and `cairn sync`
# it to s3://bench/cairn-DATASET; `restic backup` the same versions into s3:.../restic-DATASET.
# Timed, per delay, each starting with an empty cache directory (XDG_CACHE_HOME), as a restore on
# a new machine would:
#   s3-restore   cairn --repo s3://bench/cairn-DATASET restore latest --target DIR
#   sync-down    cairn --repo s3://bench/cairn-DATASET sync --source NEWEST --to LOCAL (a fresh
#                directory: only the packs the newest snapshot needs), then
#   +local       cairn --repo LOCAL restore latest --target DIR (the baseline is the sum)
#   restic       restic -r s3:.../restic-DATASET restore latest --target DIR
# Each prints wall seconds, peak RSS, the HTTP requests the server saw (all of them, the GETs
# among them and the GETs of packs; counted in moto's access log, behind the proxy) and a
# byte-for-byte comparison of the restored tree with its source (`diff -r --no-dereference`). The
# summary prints the issue's ratios with their targets; the request target is judged on the
# requests that read packs ("at most 2x the packs it needs"), the metadata requests beside them
# (config, key files, lock, listings, snapshot and index files, audit records) are shown.
# Exits 1 if any step failed or any restore differs.
set -euo pipefail
CORPUS=${1:?corpus dir with v1/ and v2/ (any path when DATASETS leaves out corpus)}
WORK=$(realpath -m "${2:?work dir}")
CAIRN=$(realpath -m "${CAIRN:-target/release/cairn}")
DATASETS=${DATASETS:-corpus app}; DELAYS=${DELAYS:-0 20}; APP_PAGE_SIZE=${APP_PAGE_SIZE:-4096}
HERE=$(dirname "$(realpath "$0")")
[[ -x $CAIRN ]] || { echo "no cairn binary at $CAIRN (cargo build --release, or CAIRN=...)"; exit 2; }
rm -rf "$WORK"; mkdir -p "$WORK"
RESULTS=$WORK/results.tsv; : >"$RESULTS"
FAILED=0; HAVE_RESTIC=0

. "$HERE/s3_server.sh"   # moto_server, the delaying proxies, requests, objects, timed, compare
export XDG_CACHE_HOME=$WORK/cache-setup
STEPS=0
report() { # dataset delay what
  printf '  %-4s ms %-11s %8.2f s %5d MiB rss %7d requests %7d GETs %5d of packs   %s\n' "$2" "$3" "$T" "$M" "$R" "$G" "$PG" "$4"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$T" "$M" "$R" "$G" "$PG" >>"$RESULTS"
}

make_app() { # dir: the app dataset, seeded, so every run restores the same bytes
  python3 - "$1" "$APP_PAGE_SIZE" <<'EOF'
import os, random, sqlite3, sys
root, page_size = sys.argv[1], int(sys.argv[2])
rng = random.Random(21)
vocabulary = ["".join(rng.choices("etaoinshrdlucmfwypvbgkqjxz", k=rng.randint(2, 11))) for _ in range(8000)]
text = lambda words: " ".join(rng.choices(vocabulary, k=words))
os.makedirs(f"{root}/files/notes")
db = sqlite3.connect(f"{root}/app.db")
db.execute(f"PRAGMA page_size={page_size}")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, created INTEGER, author TEXT, body TEXT)")
db.execute("CREATE INDEX notes_created ON notes(created)")
while db.execute("PRAGMA page_count").fetchone()[0] * page_size < 25 << 20:
    with db:
        db.executemany("INSERT INTO notes(created, author, body) VALUES (?, ?, ?)",
                       [(rng.randint(1.6e9, 1.8e9), text(2), text(rng.randint(20, 300))) for _ in range(500)])
db.close()  # the last connection checkpoints and removes the WAL: the file is all there is
for i in range(300):
    with open(f"{root}/files/notes/{i:03}.txt", "w") as f:
        f.write(text(rng.randint(500, 3000)))
for i in range(2):
    with open(f"{root}/files/blob{i}.bin", "wb") as f:
        f.write(rng.randbytes(1 << 20))
EOF
}

echo "cairn: $CAIRN ($("$CAIRN" --version)); restic: $(restic version 2>/dev/null | cut -d' ' -f2 || echo absent)"
echo "delays (added round trip, ms): $DELAYS; datasets: $DATASETS; $(nproc) cores"
for ds in $DATASETS; do
  case $ds in
    corpus) VERSIONS=("$(realpath "$CORPUS/v1")" "$(realpath "$CORPUS/v2")");;
    app)    make_app "$WORK/app"; VERSIONS=("$WORK/app");;
    *)      echo "unknown dataset $ds (corpus or app)"; exit 2;;
  esac
  NEWEST=${VERSIONS[-1]}
  echo "== $ds: restore $NEWEST ($(du -sm "$NEWEST" | cut -f1) MiB, $(find "$NEWEST" | wc -l) entries)"

  # not timed: the repositories on the server
  L=$WORK/$ds-local; S3=s3://bench/cairn-$ds
  "$CAIRN" --quiet --repo "$L" init >/dev/null
  for v in "${VERSIONS[@]}"; do "$CAIRN" --quiet --repo "$L" snapshot "$v"; done
  # cairn's capture leaves the database's empty -wal and its -shm behind, which it does not store
  # (it reads through SQLite); a clean close removes both, so that the source compares whole
  [[ $ds == app ]] && python3 -c "import sqlite3; sqlite3.connect('$WORK/app/app.db').execute('PRAGMA wal_checkpoint(TRUNCATE)').connection.close()"
  "$CAIRN" --quiet --repo "$L" sync --to "$S3"
  rm -rf "$L"
  HAVE_RESTIC=0
  if command -v restic >/dev/null; then
    HAVE_RESTIC=1
    restic -q -r "s3:$DIRECT/bench/restic-$ds" init >/dev/null
    for v in "${VERSIONS[@]}"; do restic -q -r "s3:$DIRECT/bench/restic-$ds" backup "$v" >/dev/null; done
  fi
  PACKS=$(objects "cairn-$ds" packs/); META=$(objects "cairn-$ds" config keys/ index/ snapshots/)

  for d in $DELAYS; do
    E=${ENDPOINT[$d]}; OUT=${OUT_DIR:-$WORK}/restore; DOWN=$WORK/down
    rm -rf "$OUT"
    if timed s3-restore "AWS_ENDPOINT_URL=$E '$CAIRN' --quiet --repo $S3 restore latest --target $OUT"; then
      compare "$NEWEST" "$OUT"; report "$ds" "$d" s3-restore "$SAME"
    fi
    rm -rf "$OUT" "$DOWN"
    if timed sync-down "AWS_ENDPOINT_URL=$E '$CAIRN' --quiet --repo $S3 sync --source '$NEWEST' --to $DOWN"; then
      NEEDED=$(find "$DOWN/packs" -type f | wc -l)
      report "$ds" "$d" sync-down "$NEEDED of $PACKS packs pulled"
      if timed +local "'$CAIRN' --quiet --repo $DOWN restore latest --target $OUT"; then
        compare "$NEWEST" "$OUT"; report "$ds" "$d" +local "$SAME"
      fi
      printf '%s\tpacks\t%s\t%s\t%s\n' "$ds" "$NEEDED" "$PACKS" "$META" >>"$RESULTS"
    fi
    rm -rf "$OUT" "$DOWN"
    if [[ $HAVE_RESTIC == 1 ]] &&
        timed restic "restic -q -r s3:$E/bench/restic-$ds restore latest --target $OUT"; then
      compare "$NEWEST" "$OUT$NEWEST"; report "$ds" "$d" restic "$SAME"   # restic adds the source's path
    fi
    rm -rf "$OUT"
  done
done
[[ $HAVE_RESTIC == 1 ]] || echo "restic not installed: its columns are empty"

python3 - "$RESULTS" <<'EOF'
import sys
from collections import defaultdict
steps, packs = {}, {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[1] == "packs":
        packs[f[0]] = tuple(map(int, f[2:]))  # needed, in the bucket, metadata objects
    else:
        steps[f[0], int(f[1]), f[2]] = (float(f[3]), int(f[4]), int(f[5]), int(f[7]))  # s, MiB, requests, pack GETs
datasets = list(dict.fromkeys(k[0] for k in steps))
delays = sorted({k[1] for k in steps})
rows = []
def row(name, ds, value, target, met):
    rows.append((name, ds, value, target, "shown" if met is None else "met" if met else "MISSED"))
for ds in datasets:
    s = lambda d, what: steps.get((ds, d, what))
    needed, total, meta = packs.get(ds, (0, 0, 0))
    for d in delays:
        a, b, c = s(d, "s3-restore"), s(d, "sync-down"), s(d, "+local")
        if a and b and c:
            x = a[0] / (b[0] + c[0])
            row(f"s3 restore / (sync-down + local), {d} ms", ds,
                f"{a[0]:.2f} / ({b[0]:.2f} + {c[0]:.2f}) = {x:.2f}x", "<= 2x", x <= 2)
    if 0 in delays:
        for d in delays[1:]:
            a, z = s(d, "s3-restore"), s(0, "s3-restore")
            if a and z:
                x = a[0] / z[0]
                # Issue 21 sets this bound for the toolchain; a restore of a fraction of a
                # second is a handful of round trips one after another, and only shown.
                judged = ds == "corpus"
                row(f"s3 restore {d} ms / 0 ms", ds, f"{a[0]:.2f} / {z[0]:.2f} = {x:.2f}x",
                    "<= 1.5x" if judged else "-", x <= 1.5 if judged else None)
    for d in delays:
        # The requests that read packs, against the packs the restore needs; the rest read or
        # write the metadata (config, key files, lock, snapshot and index listings and files,
        # audit records), a fixed number however large the snapshot: shown, not judged.
        a = s(d, "s3-restore")
        if a and needed:
            row(f"s3 restore pack requests, {d} ms", ds,
                f"{a[3]} = {a[3] / needed:.1f} per pack ({needed} packs; +{a[2] - a[3]} metadata requests)",
                f"<= 2 x {needed} = {2 * needed}", a[3] <= 2 * needed)
    for d in delays:
        a, r = s(d, "s3-restore"), s(d, "restic")
        if a and r:
            x = r[0] / a[0]
            row(f"restic / cairn time, {d} ms", ds, f"{r[0]:.2f} / {a[0]:.2f} = {x:.2f}x", ">= 3x", x >= 3)
    for d in delays:
        a, r = s(d, "s3-restore"), s(d, "restic")
        if a and r:
            row(f"peak RSS cairn / restic, {d} ms", ds, f"{a[1]} / {r[1]} MiB", "cairn <= restic", a[1] <= r[1])
print("\nsummary (one run: read as ratios)")
widths = [max(len(str(r[i])) for r in rows + [("ratio", "dataset", "measured", "target", "")]) for i in range(5)]
for r in [("ratio", "dataset", "measured", "target", "")] + rows:
    print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
EOF
[[ $FAILED == 0 ]] || { echo "SOME STEPS FAILED OR RESTORES DIFFER (see above)"; exit 1; }
