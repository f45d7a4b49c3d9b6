#!/usr/bin/env bash
# cairn next to restic, rustic and borg, in one run, on the same data, with the machine's own
# limits printed beside them. A benchmark, not a test: CI does not run it.
#
# usage: benches/peers.sh toolchain WORK_DIR     two Rust toolchains as v1 and v2 (~1.5 GiB each)
#        benches/peers.sh scale WORK_DIR [FILES]  a generated tree of FILES (default 1,000,000)
#                                                 files of 1-16 KiB (about 8.5 GB for 1M)
# env:   TOOLS    tools to run, in order (default "cairn restic rustic borg"; missing ones are skipped)
#        ROUNDS   rounds (toolchain default 3, scale 1); each starts from empty repositories
#        INSTALL=1 install the peers first: restic and borgbackup from apt, rustic with cargo
#        CAIRN    the cairn binary (default target/release/cairn)
#
# toolchain steps: snapshot v1, v1 again (unchanged), v2 over the same path, restore v2,
# forget --keep-last 1 + prune, check --read-data. Each step runs for every tool before the next
# step starts (the first tool rotates from round to round), so a slow spell of a shared host
# falls on all tools alike rather than on one. scale steps: first snapshot, unchanged
# re-snapshot, full restore, one tool after the other (their repositories would not fit on disk
# together), the first tool also rotating per round. Before every step the disks must be quiet
# (see settle) and the page cache is dropped. Every step prints wall seconds, peak RSS and repository size; the summary prints,
# per step, the median over rounds of each tool's time, and the best peer's median divided by
# cairn's (above 1: cairn is faster), with the fastest and slowest round of each.
# Every tool encrypts except borg (`-e none`, as in ../shared/bench/peers.sh).
set -euo pipefail
SCENARIO=${1:?toolchain or scale}; WORK=$(realpath -m "${2:?work dir}"); FILES=${3:-1000000}
CAIRN=$(realpath -m "${CAIRN:-target/release/cairn}")
if [[ ${INSTALL:-0} == 1 ]]; then
  apt-get install -y -qq restic borgbackup rsync zstd >/dev/null
  command -v rustic >/dev/null || cargo install rustic-rs --locked
fi
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench RUSTIC_PASSWORD=bench BORG_PASSPHRASE=
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
mkdir -p "$WORK"
RESULTS=$WORK/results.txt; : >"$RESULTS"

settle() { # flush, then wait (up to 2 minutes) until no disk has done any I/O for a second:
  # the file system may still be trimming what the last step deleted (ext4 `discard`), and that
  # must not slow the next tool down
  local before after i
  sync
  for ((i = 0; i < 120; i++)); do
    before=$(awk '{ n += $4 + $8 + $15 } END { print n }' /proc/diskstats); sleep 1
    after=$(awk '{ n += $4 + $8 + $15 } END { print n }' /proc/diskstats)
    [[ $before == "$after" ]] && return
  done
}

ROUND=1
step() { # tool step command
  local tool=$1 s=$2 cmd=$3 t m size
  settle; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true   # cold cache when allowed
  if ! /usr/bin/time -o "$WORK/step.time" -f '%e %M' bash -c "$cmd" >/dev/null 2>"$WORK/step.err"; then
    echo "$tool $s FAILED: $(tail -2 "$WORK/step.err" | tr '\n' ' ')"; return 0
  fi
  read -r t m <"$WORK/step.time"
  size=$(du -sm "$WORK/repo-$tool" 2>/dev/null | cut -f1)
  printf '%-7s %-18s %8.2f s %6d MiB rss %7s MiB repo\n' "$tool" "$s" "$t" $((m / 1024)) "$size"
  echo "$s $tool $t $((m / 1024)) $size $ROUND" >>"$RESULTS"
}

limits() { # the machine's own speed on this data: read+compress, walk, create files
  local dir=$1
  settle; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f 'limit   tar c | zstd -T2     %e s' sh -c "tar cf - -C '$dir' . | zstd -q -T2 -3 >/dev/null"
  /usr/bin/time -f 'limit   find (lstat)         %e s' find "$dir" -printf '%s %T@\n' >/dev/null
  rm -rf "$WORK/limit-copy"; mkdir -p "$WORK/limit-copy"
  /usr/bin/time -f 'limit   tar c | tar x        %e s' sh -c "tar cf - -C '$dir' . | tar xf - -C '$WORK/limit-copy'"
  rm -rf "$WORK/limit-copy"
}

commands() { # tool repo live restore-target -> sets INIT B RS P V
  local tool=$1 R=$2 live=$3 out=$4
  case $tool in
    cairn)  C="$CAIRN --repo $R --quiet"; INIT="$C init"
            B="$C snapshot $live"; RS="$C restore latest --target $out"
            P="$C forget --keep-last 1 --prune"; V="$C check --read-data";;
    restic) C="restic -q -r $R"; INIT="$C init"
            B="$C backup $live"; RS="$C restore latest --target $out"
            P="$C forget --keep-last 1 --prune"; V="$C check --read-data";;
    rustic) C="rustic -r $R --no-progress"; INIT="$C init"
            B="$C backup $live"; RS="$C restore latest $out"
            P="$C forget --keep-last 1 --prune"; V="$C check --read-data";;
    borg)   INIT="borg init -e none $R"
            B="borg create --compression zstd,3 $R::{now} $live"
            RS="mkdir -p $out && cd $out && borg extract $R::\$(borg list --last 1 --short $R)"
            P="borg prune --keep-last 1 $R && borg compact $R"; V="borg check --verify-data $R";;
  esac
}

available() { [[ $1 == cairn ]] && [[ -x $CAIRN ]] || command -v "$1" >/dev/null; }

tools=()
for tool in ${TOOLS:-cairn restic rustic borg}; do
  if available "$tool"; then tools+=("$tool"); else echo "$tool: not installed (INSTALL=1)"; fi
done
in_turn() { # the tools in this round's order: the first one rotates from round to round
  local i
  for ((i = 0; i < ${#tools[@]}; i++)); do echo "${tools[(i + ROUND - 1) % ${#tools[@]}]}"; done
}

case $SCENARIO in
  toolchain)
    V1=$(rustc +stable --print sysroot); V2=$(rustc +nightly --print sysroot)
    echo "v1 $V1 ($(du -sm "$V1" | cut -f1) MiB), v2 $V2 ($(du -sm "$V2" | cut -f1) MiB); $(nproc) cores"
    limits "$V1"
    live=$WORK/live
    each() { # step-name command-variable: the step for every tool, in this round's order
      local tool
      for tool in $(in_turn); do
        commands "$tool" "$WORK/repo-$tool" "$live" "$WORK/restore-$tool"
        step "$tool" "$1" "${!2}"
        if [[ $1 == restore-v2 ]]; then # compare while it is there, then free the space
          got=$WORK/restore-$tool; [[ -d $got$live ]] && got=$got$live
          if diff -rq "$live" "$got" >/dev/null 2>&1; then echo "$tool restore matches"; else echo "$tool restore DIFFERS"; fi
          rm -rf "$WORK/restore-$tool"
        fi
      done
    }
    for ((ROUND = 1; ROUND <= ${ROUNDS:-3}; ROUND++)); do
      echo "round $ROUND"
      rm -rf "$live"; mkdir -p "$live"; rsync -a --delete "$V1/" "$live/"
      for tool in "${tools[@]}"; do
        rm -rf "$WORK/repo-$tool" "$WORK/restore-$tool"
        commands "$tool" "$WORK/repo-$tool" "$live" "$WORK/restore-$tool"; bash -c "$INIT" >/dev/null 2>&1
      done
      each snapshot-v1 B
      each snapshot-v1-again B
      rsync -a --delete "$V2/" "$live/"
      each snapshot-v2 B
      each restore-v2 RS
      each prune-keep1 P
      each check-data V
    done;;
  scale)
    live=$WORK/scale
    if [[ ! -f $live/.complete-$FILES ]]; then
      rm -rf "$live"
      python3 - "$live" "$FILES" <<'EOF'
# FILES files of 1-16 KiB in 1000-file directories two levels deep: half of each file random
# bytes, half words (so about half compresses), seeded, so little content repeats.
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(11)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
for i in range(count):
    d = os.path.join(root, f"{i // 100000:02d}", f"{i // 1000 % 100:02d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    size = rng.randint(1024, 16384)
    text = b" ".join(rng.choice(words) for _ in range(size // 12))[: size // 2]
    with open(os.path.join(d, f"f{i}.dat"), "wb") as f:
        f.write(rng.randbytes(size - len(text)) + text)
open(os.path.join(root, f".complete-{count}"), "w").close()
EOF
    fi
    echo "scale tree: $FILES files, $(du -sm "$live" | cut -f1) MiB; $(nproc) cores"
    limits "$live"
    for ((ROUND = 1; ROUND <= ${ROUNDS:-1}; ROUND++)); do
      for tool in $(in_turn); do
        R=$WORK/repo-$tool; out=$WORK/restore-$tool
        rm -rf "$R" "$out"
        commands "$tool" "$R" "$live" "$out"; bash -c "$INIT" >/dev/null 2>&1
        step "$tool" scale-snapshot "$B"
        step "$tool" scale-again "$B"
        step "$tool" scale-restore "$RS"
        rm -rf "$out" "$R"
      done
    done;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 2;;
esac

echo; echo "median over rounds: best peer / cairn (time; above 1 means cairn is faster), peak RSS, and [fastest-slowest round]:"
awk '{ k = $1" "$2; n[k]++; t[k, n[k]] = $3; if ($4 > m[k]) m[k] = $4; steps[$1] = 1 }
     function median(k,   i, j, x, c) { c = n[k]; for (i = 1; i <= c; i++) a[i] = t[k, i]
       for (i = 2; i <= c; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
       lo = a[1]; hi = a[c]; return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2 }
     END { for (s in steps) { best = ""; for (k in n) { split(k, p, " "); if (p[1] == s && p[2] != "cairn") { x = median(k); if (best == "" || x < best) { best = x; bm = m[k]; bt = p[2]; blo = lo; bhi = hi } } }
           if (best != "" && (s" cairn") in n) { c = median(s" cairn")
             printf "%-18s cairn %7.2f s [%.2f-%.2f] %5d MiB   best peer %-7s %7.2f s [%.2f-%.2f] %5d MiB   ratio %.2f\n", s, c, lo, hi, m[s" cairn"], bt, best, blo, bhi, bm, best / c } } }' "$RESULTS"
