# Sourced by the s3_*.sh benchmarks: one way to start the loopback S3 server and the delaying
# proxies in front of it, and to count the requests the server saw.
#
# Needs WORK (scratch directory, existing) and DELAYS (added round trips in ms, "0 20") set, and
# HERE (this directory). Starts `moto_server` on a free loopback port (killed on exit with the
# proxies), one `delay_proxy` (benches/delay_proxy.rs, built here) per non-zero delay, and
# creates the bucket `bench`. Sets:
#   PIDS           the processes to kill on exit (the caller's EXIT trap may add to them)
#   DIRECT         the server's endpoint; ENDPOINT[d] the endpoint for delay d
#   AWS_* etc.     exported: credentials, region, AWS_ENDPOINT_URL=DIRECT, AWS_ALLOW_HTTP,
#                  CAIRN_PASSWORD and RESTIC_PASSWORD (both `bench`)
# Defines: free_port, requests (all requests, GETs, pack GETs and PUTs the server has logged),
# objects PREFIX [SUBDIR...] (objects under the prefix), timed LABEL COMMAND (a step's time, peak
# RSS and requests; the caller sets STEPS=0 and FAILED=0) and compare SOURCE RESTORED.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
PIDS=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
declare -A ENDPOINT
if [[ $DELAYS != 0 ]]; then
  (cd "$HERE/.." && cargo build --quiet --release --example delay_proxy) || exit 2
  DELAY_PROXY=$HERE/../target/release/examples/delay_proxy
fi
for d in $DELAYS; do
  if [[ $d == 0 ]]; then ENDPOINT[$d]=http://127.0.0.1:$PORT; continue; fi
  p=$(free_port)
  "$DELAY_PROXY" "$p" "$PORT" "$(python3 -c "print($d / 2)")" >"$WORK/proxy-$d.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do grep -qs ready "$WORK/proxy-$d.out" && break; sleep 0.1; done
  ENDPOINT[$d]=http://127.0.0.1:$p
done
DIRECT=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=$DIRECT AWS_ALLOW_HTTP=true CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
python3 -c "import boto3; boto3.client('s3', endpoint_url='$DIRECT').create_bucket(Bucket='bench')"

objects() { # prefix [subdir...] -> the number of objects under prefix/subdir (all subdirs summed)
  python3 - "$@" <<PY
import boto3, sys
s3 = boto3.client("s3", endpoint_url="$DIRECT")
prefix, subdirs = sys.argv[1], sys.argv[2:] or [""]
n = 0
for sub in subdirs:
    key = f"{prefix}/{sub}" if sub else f"{prefix}/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=key):
        n += len(page.get("Contents", []))
print(n)
PY
}
requests() { # all requests, the GETs, the GETs of packs and the PUTs, once the log caught up
  local now last=-1
  for _ in $(seq 20); do
    now=$(grep -cE '"(GET|PUT|HEAD|POST|DELETE) ' "$WORK/moto.log" || true)
    [[ $now == "$last" ]] && break; last=$now; sleep 0.2
  done
  echo "$now $(grep -cE '"GET ' "$WORK/moto.log" || true) $(grep -cE '"GET /[^ ?]*/packs/' "$WORK/moto.log" || true)" \
    "$(grep -cE '"PUT ' "$WORK/moto.log" || true)"
}
timed() { # label command -> T (s), M (MiB peak RSS), R (requests), G (GETs), PG (GETs of packs),
  #                             PUT (PUTs) the server saw; each step with an empty cache directory
  #                             (XDG_CACHE_HOME); false (and FAILED=1) on failure
  local label=$1 cmd=$2 r0 g0 pg0 put0 r1 g1 pg1 put1
  STEPS=$((STEPS + 1)); rm -rf "$WORK/cache-$STEPS"
  # What earlier steps wrote to disk (the setup's repositories, a sync's packs) is flushed first,
  # or its writeback lands on this step's clock (the first timed restore took 4.2 s instead of 2.6).
  sync
  read -r r0 g0 pg0 put0 < <(requests)
  if ! XDG_CACHE_HOME=$WORK/cache-$STEPS /usr/bin/time -o "$WORK/step.time" -f '%e %M' \
      bash -c "$cmd" >"$WORK/step.out" 2>"$WORK/step.err"; then
    echo "  $label FAILED: $(tail -3 "$WORK/step.err" | tr '\n' ' ')"; FAILED=1; return 1
  fi
  read -r T M <"$WORK/step.time"; M=$((M / 1024))
  read -r r1 g1 pg1 put1 < <(requests); R=$((r1 - r0)); G=$((g1 - g0)); PG=$((pg1 - pg0)); PUT=$((put1 - put0))
}
compare() { # source restored -> SAME: identical, or the first differences (and FAILED=1)
  if diff -r --no-dereference "$1" "$2" >"$WORK/diff.out" 2>&1; then SAME=identical; else
    SAME="DIFFERS from $1:"$'\n'$(head -5 "$WORK/diff.out" | sed 's/^/      /'); FAILED=1
  fi
}
