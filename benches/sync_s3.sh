#!/usr/bin/env bash
# Offsite sync to a loopback S3 server: `cairn sync` next to `restic copy`, in one run, on the
# same data and the same server; then `cairn sync` once more with create-only credentials (an IAM
# policy that denies every delete, enforced by a second server: tests/moto_iam.py).
#
# usage: benches/sync_s3.sh CORPUS_DIR WORK_DIR
#   CORPUS_DIR holds two versions of one tree, v1/ and v2/ (two Rust toolchains, as for
#   ../shared/bench/peers.sh). WORK_DIR is scratch space (about 3x the corpus).
# needs: moto_server (pip install 'moto[server]'), python3 with boto3 (comes with moto); restic
#   (skipped if absent).
#
# For each tool: snapshot v1 into a local repository (not timed), copy it to S3 (timed), snapshot
# v2 locally, copy again (timed: the incremental case), copy once more with nothing new (timed).
# Each timed step prints wall seconds, peak RSS, the HTTP requests the server saw (counted from
# moto's access log), and the objects and bytes in the destination afterwards. The create-only
# run's destination also holds the lock files and release markers its syncs could not delete
# (two per sync that copied something).
set -euo pipefail
CORPUS=$(realpath "${1:?corpus dir with v1/ and v2/}"); WORK=$(realpath -m "${2:?work dir}")
CAIRN=$(realpath -m "${CAIRN:-target/release/cairn}")
rm -rf "$WORK"; mkdir -p "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench RESTIC_FROM_PASSWORD=bench
python3 - <<EOF
import boto3
boto3.client("s3", endpoint_url="$AWS_ENDPOINT_URL").create_bucket(Bucket="bench")
EOF

objects() { # prefix -> "N objects, M MiB"
  python3 - "$1" <<EOF
import boto3, sys
s3 = boto3.client("s3", endpoint_url="$AWS_ENDPOINT_URL")
n = size = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=sys.argv[1] + "/"):
    for o in page.get("Contents", []):
        n += 1; size += o["Size"]
print(f"{n} objects, {size / 2**20:.0f} MiB")
EOF
}
LOG=$WORK/moto.log
requests() { grep -cE '"(GET|PUT|HEAD|POST|DELETE) ' "$LOG" || true; }
step() { # tool step prefix command
  local tool=$1 s=$2 prefix=$3 cmd=$4 t m before after
  before=$(requests)
  if ! /usr/bin/time -o "$WORK/step.time" -f '%e %M' bash -c "$cmd" >"$WORK/step.out" 2>"$WORK/step.err"; then
    echo "$tool $s FAILED"; tail -5 "$WORK/step.err"; return 0
  fi
  read -r t m <"$WORK/step.time"
  after=$(requests)
  printf '%-7s %-14s %7.2f s %5d MiB rss %6d requests   destination: %s\n' \
    "$tool" "$s" "$t" $((m / 1024)) $((after - before)) "$(objects "$prefix")"
}

V1=$(realpath "$CORPUS/v1"); V2=$(realpath "$CORPUS/v2")
echo "corpus: v1 $(du -sm "$V1" | cut -f1) MiB, v2 $(du -sm "$V2" | cut -f1) MiB; $(nproc) cores"

# cairn
L=$WORK/cairn-local; C="$CAIRN --quiet --repo $L"
$C init >/dev/null
$C snapshot "$V1"
step cairn sync-v1 cairn "$C sync --to s3://bench/cairn"
$C snapshot "$V2"
step cairn sync-v2 cairn "$C sync --to s3://bench/cairn"
step cairn sync-again cairn "$C sync --to s3://bench/cairn"
"$CAIRN" --repo s3://bench/cairn --quiet check --read-data && echo "cairn   destination check --read-data: clean"

# cairn with create-only credentials, against a server that enforces the README's host policy
IAM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
POLICIES='{"host": {"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::bench"},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "arn:aws:s3:::bench/*"},
  {"Effect": "Deny", "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"], "Resource": "*"}]},
 "trusted": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}}'
python3 "$(dirname "$0")/../tests/moto_iam.py" "$IAM_PORT" bench "$POLICIES" >"$WORK/iam.keys" 2>"$WORK/moto-iam.log" &
IAM=$!
trap 'kill $MOTO $IAM 2>/dev/null || true' EXIT
until grep -q '^{' "$WORK/iam.keys" 2>/dev/null; do sleep 0.2; done
key() { python3 -c 'import json,sys; print(json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][0])[sys.argv[2]][int(sys.argv[3])])' "$WORK/iam.keys" "$1" "$2"; }
HOST="env AWS_ENDPOINT_URL=http://127.0.0.1:$IAM_PORT AWS_ACCESS_KEY_ID=$(key host 0) AWS_SECRET_ACCESS_KEY=$(key host 1)"
TRUSTED="env AWS_ENDPOINT_URL=http://127.0.0.1:$IAM_PORT AWS_ACCESS_KEY_ID=$(key trusted 0) AWS_SECRET_ACCESS_KEY=$(key trusted 1)"
objects() { # prefix -> "N objects, M MiB" on the enforcing server, read with the trusted key
  $TRUSTED python3 - "$1" <<EOF
import boto3, sys
s3 = boto3.client("s3")
n = size = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=sys.argv[1] + "/"):
    for o in page.get("Contents", []):
        n += 1; size += o["Size"]
print(f"{n} objects, {size / 2**20:.0f} MiB")
EOF
}
LOG=$WORK/moto-iam.log
L=$WORK/cairn-local-create-only; C="$CAIRN --quiet --repo $L"
$C init >/dev/null
$C snapshot "$V1"
step create-only sync-v1 cairn "$HOST $C sync --to s3://bench/cairn"
$C snapshot "$V2"
step create-only sync-v2 cairn "$HOST $C sync --to s3://bench/cairn"
step create-only sync-again cairn "$HOST $C sync --to s3://bench/cairn"
$TRUSTED "$CAIRN" --repo s3://bench/cairn --quiet check --read-data && echo "create-only destination check --read-data (trusted key): clean"
kill $IAM
command -v restic >/dev/null || { echo "restic not installed: skipped"; exit 0; }
LOG=$WORK/moto.log
objects() { # prefix -> "N objects, M MiB"
  python3 - "$1" <<EOF
import boto3, sys
s3 = boto3.client("s3", endpoint_url="$AWS_ENDPOINT_URL")
n = size = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=sys.argv[1] + "/"):
    for o in page.get("Contents", []):
        n += 1; size += o["Size"]
print(f"{n} objects, {size / 2**20:.0f} MiB")
EOF
}

# restic
L=$WORK/restic-local; D=s3:$AWS_ENDPOINT_URL/bench/restic
restic -q -r "$L" init >/dev/null
restic -q -r "$L" backup "$V1" >/dev/null
restic -q -r "$D" init --copy-chunker-params --from-repo "$L" >/dev/null
step restic copy-v1 restic "restic -q -r $D copy --from-repo $L"
restic -q -r "$L" backup "$V2" >/dev/null
step restic copy-v2 restic "restic -q -r $D copy --from-repo $L"
step restic copy-again restic "restic -q -r $D copy --from-repo $L"
restic -q -r "$D" check --read-data >/dev/null && echo "restic  destination check --read-data: clean"
