#!/usr/bin/env bash
# `cairn status` with 10 and 10,000 runs in the audit log, on a local directory and on a loopback
# S3 server (benches/status_cost.rs does the measuring).
#
# usage: benches/status_cost.sh WORK_DIR
# needs: moto_server and boto3 (pip install 'moto[server]').
set -euo pipefail
WORK=$(realpath -m "${1:?work dir}")
rm -rf "$WORK"; mkdir -p "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true
python3 -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='bench')"
cargo bench --bench status_cost -- "$WORK/local" s3://bench/status
