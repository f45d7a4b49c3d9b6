#!/usr/bin/env bash
# `cairn serve` with many snapshots: the latency of `GET /api/v1/backups` (the first call, which
# decodes every manifest, and then N_CALLS more, which read only the listing), and the server's
# resident memory when idle and after the calls. The issue's figure is 1,000 snapshots.
#
#   cargo build --release && benches/serve_latency.sh [DIR]        (SNAPSHOTS=1000 N_CALLS=200)
#
# The repository is plain (`init --encryption none`): creating 1,000 snapshots of an encrypted
# one would cost a key derivation each. The server decrypts each manifest once either way.
set -euo pipefail
CAIRN=${CAIRN:-$(pwd)/target/release/cairn}
SNAPSHOTS=${SNAPSHOTS:-1000}
N_CALLS=${N_CALLS:-200}
DIR=${1:-/tmp/cairn-serve-bench}
TOKEN=bench-token-0123456789abcdef0123456789

rm -rf "$DIR" && mkdir -p "$DIR/srv/app"
for i in $(seq 1 20); do head -c 4096 /dev/urandom > "$DIR/srv/app/file$i"; done
printf 'bench %s\n' "$TOKEN" > "$DIR/tokens" && chmod 600 "$DIR/tokens"
cat > "$DIR/cairn.toml" <<TOML
repository = "repo"
encryption = "none"
[[source]]
name = "app"
paths = ["srv/app"]
[serve]
token_file = "tokens"
TOML
"$CAIRN" --repo "$DIR/repo" --quiet init --encryption none
echo "creating $SNAPSHOTS snapshots..."
for i in $(seq 1 "$SNAPSHOTS"); do
  echo "$i" > "$DIR/srv/app/counter"
  "$CAIRN" --repo "$DIR/repo" --quiet snapshot --source app "$DIR/srv/app"
done

"$CAIRN" serve --config "$DIR/cairn.toml" --listen 127.0.0.1:0 2> "$DIR/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$DIR/serve.log" && break; sleep 0.1; done
URL=$(sed -n 's/^cairn serve: listening on \([^ ]*\).*/\1/p' "$DIR/serve.log")
sleep 2
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$SERVER/status"; }
echo "idle RSS before any call: $(rss)"

get() { curl -sS -o /dev/null -w '%{http_code} %{time_total}\n' -H "Authorization: Bearer $TOKEN" "$URL/api/v1/backups"; }
read -r code first < <(get)
[ "$code" = 200 ] || { echo "GET /api/v1/backups answered $code"; exit 1; }
count=$(curl -sS -H "Authorization: Bearer $TOKEN" "$URL/api/v1/backups" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
echo "snapshots listed: $count"
echo "first call (decodes every manifest): $(python3 -c "print(f'{$first * 1000:.1f} ms')")"
for _ in $(seq 1 "$N_CALLS"); do get; done | awk '{print $2}' | sort -n | python3 -c '
import sys
t = [float(l) * 1000 for l in sys.stdin]
pick = lambda q: t[min(len(t) - 1, int(q * len(t)))]
print(f"{len(t)} calls after it: p50 {pick(0.5):.1f} ms, p95 {pick(0.95):.1f} ms, p99 {pick(0.99):.1f} ms, max {t[-1]:.1f} ms")'
bytes=$(curl -sS -H "Authorization: Bearer $TOKEN" "$URL/api/v1/backups" | wc -c)
echo "answer size: $bytes bytes"
sleep 1
echo "RSS after the calls: $(rss)"
