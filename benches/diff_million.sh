#!/usr/bin/env bash
# `cairn diff` of two snapshots of a million files that differ in 100 (issue 25): its time and,
# from an object store, its requests. A diff reads only the trees of directories that differ (a
# subtree with the same id is the same), so it should cost the 100 changes, not the million.
#
# usage: benches/diff_million.sh WORK_DIR
#   WORK_DIR is scratch space, removed first (about 5 GiB of inodes and repositories).
# env:   CAIRN  the cairn binary (default target/release/cairn)
#        FILES  files in the tree (default 1000000: 1,000 directories of 1,000 files)
#        DELAY  added round trip in ms for the S3 runs through benches/delay_proxy.rs (default 20)
# needs: moto_server and boto3 (pip install 'moto[server]'), python3.
#
# Not timed: the tree (small files of distinct text), a first snapshot, 100 files changed in 100
# directories (one each: content), 10 added and 10 removed among them, a second snapshot, and a
# sync of the repository to s3://bench/cairn on a loopback moto server. Timed, each printed with
# wall seconds, peak RSS and, for S3, the requests the server saw (from moto's access log):
#   local        cairn --repo LOCAL diff A B
#   s3 cold      cairn --repo s3://bench/cairn diff A B, empty cache directory
#   s3 warm      the same again, the cache kept (trees and index come from it)
#   s3 cold/+N   the cold diff with N ms more round trip
# Each diff's change list is checked against what was changed (exits 1 where it differs).
set -euo pipefail
WORK=$(realpath -m "${1:?work dir}")
CAIRN=$(realpath -m "${CAIRN:-target/release/cairn}")
FILES=${FILES:-1000000}; DELAY=${DELAY:-20}
HERE=$(dirname "$(realpath "$0")")
[[ -x $CAIRN ]] || { echo "no cairn binary at $CAIRN (cargo build --release, or CAIRN=...)"; exit 2; }
rm -rf "$WORK"; mkdir -p "$WORK"
export CAIRN_PASSWORD=bench XDG_CACHE_HOME=$WORK/cache

TREE=$WORK/tree LOCAL=$WORK/repo
python3 - "$TREE" "$FILES" <<'EOF'
import os, sys
root, files = sys.argv[1], int(sys.argv[2])
per_dir = 1000
for d in range((files + per_dir - 1) // per_dir):
    dir = f"{root}/d{d:04}"
    os.makedirs(dir)
    for f in range(min(per_dir, files - d * per_dir)):
        with open(f"{dir}/f{f:04}.txt", "w") as out:
            out.write(f"file {f} of directory {d}\n")
EOF
echo "cairn: $CAIRN ($("$CAIRN" --version)); $(nproc) cores; tree: $FILES files"
"$CAIRN" --quiet --repo "$LOCAL" init
/usr/bin/time -f '  first snapshot: %e s, %M KiB peak RSS' "$CAIRN" --quiet --repo "$LOCAL" snapshot "$TREE"
A=$("$CAIRN" --repo "$LOCAL" --json snapshots | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
python3 - "$TREE" "$WORK/expected" <<'EOF'
import os, sys
root, expected = sys.argv[1], []
dirs = sorted(os.listdir(root))
step = max(1, len(dirs) // 100)
for i, d in enumerate(dirs[::step][:100]):
    name = sorted(os.listdir(f"{root}/{d}"))[0]
    with open(f"{root}/{d}/{name}", "a") as out:
        out.write("changed\n")
    expected.append(f"modified /{d}/{name}")
    if i < 10:
        with open(f"{root}/{d}/added.txt", "w") as out:
            out.write("added\n")
        expected.append(f"added /{d}/added.txt")
    elif i < 20:
        gone = sorted(os.listdir(f"{root}/{d}"))[-1]
        os.remove(f"{root}/{d}/{gone}")
        expected.append(f"removed /{d}/{gone}")
open(sys.argv[2], "w").write("\n".join(sorted(expected)) + "\n")
EOF
/usr/bin/time -f '  second snapshot: %e s, %M KiB peak RSS' "$CAIRN" --quiet --repo "$LOCAL" snapshot "$TREE"
B=$("$CAIRN" --repo "$LOCAL" --json snapshots | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); PROXY=$(free_port)
moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
PIDS=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
(cd "$HERE/.." && cargo build --quiet --release --example delay_proxy) || exit 2
"$HERE/../target/release/examples/delay_proxy" "$PROXY" "$PORT" "$(python3 -c "print($DELAY / 2)")" >"$WORK/proxy.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -qs ready "$WORK/proxy.out" && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
python3 -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='bench')"
"$CAIRN" --quiet --repo "$LOCAL" sync --to s3://bench/cairn

requests() { # requests moto has logged, once its log caught up
  local now last=-1
  for _ in $(seq 20); do
    now=$(grep -cE '"(GET|PUT|HEAD|POST|DELETE) ' "$WORK/moto.log" || true)
    [[ $now == "$last" ]] && break; last=$now; sleep 0.2
  done
  echo "$now"
}
FAILED=0
diffed() { # label cache endpoint repo
  local label=$1 r0 r1
  r0=$(requests)
  AWS_ENDPOINT_URL=$3 XDG_CACHE_HOME=$2 /usr/bin/time -o "$WORK/time" -f '%e %M' \
    "$CAIRN" --repo "$4" --json diff "$A" "$B" >"$WORK/diff.json"
  r1=$(requests)
  read -r T M <"$WORK/time"
  python3 - "$WORK/diff.json" "$WORK/expected" "$label" "$T" "$((M / 1024))" "$((r1 - r0))" "$4" <<'EOF' || FAILED=1
import json, sys
out, expected = json.load(open(sys.argv[1])), open(sys.argv[2]).read().split("\n")[:-1]
label, t, rss, requests, repo = sys.argv[3:]
got = sorted(f"{c['change']} {c['path']}" for c in out["changes"])
s = out["summary"]
where = f"{requests} requests" if repo.startswith("s3://") else "local"
print(f"  {label:<14} {float(t):6.2f} s {int(rss):5d} MiB rss  {s['trees_read']} trees read  {len(got)} changes  {where}")
if got != expected:
    print(f"  {label}: the changes differ from what was changed"); sys.exit(1)
EOF
}
diffed local "$WORK/cache-local" "$AWS_ENDPOINT_URL" "$LOCAL"
diffed "s3 cold" "$WORK/cache-s3" "$AWS_ENDPOINT_URL" s3://bench/cairn
diffed "s3 warm" "$WORK/cache-s3" "$AWS_ENDPOINT_URL" s3://bench/cairn
diffed "s3 cold/+${DELAY}ms" "$WORK/cache-s3-delay" "http://127.0.0.1:$PROXY" s3://bench/cairn
diffed "s3 warm/+${DELAY}ms" "$WORK/cache-s3-delay" "http://127.0.0.1:$PROXY" s3://bench/cairn
[[ $FAILED == 0 ]] || { echo "A DIFF DID NOT NAME EXACTLY WHAT CHANGED"; exit 1; }
