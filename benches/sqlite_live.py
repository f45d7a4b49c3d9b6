#!/usr/bin/env python3
"""How a capture of a large, busy SQLite database affects the application writing to it.

A writer thread (its own connection, busy_timeout=5000, synchronous=NORMAL) commits a one-row
UPDATE every 10 ms into a WAL-mode database of at least 1 GiB and times every commit. While it
runs, the script times `cairn snapshot --sqlite DB` into a fresh repository, then
`sqlite3 DB ".backup COPY"` (SQLite's online backup API, 100 pages per step), and prints the
writer's commits, failures and latencies during each, next to an idle baseline. Without the
writer it then times both captures again, for comparison, and restores cairn's capture under
load to check it.

Acceptance target (benches/README.md): during a capture of >= 1 GiB the writer sees zero
failures and a p99 commit latency under 20 ms.

Standard library only; needs the sqlite3 command-line tool. The database is built once (real
documentation text, like benches/sqlite_churn.py) and reused by later runs.
"""

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sqlite_churn import MIB, TextSource, build_database, human, load_corpus, run  # noqa: E402


class Writer(threading.Thread):
    """Commits `UPDATE notes SET body = ? WHERE id = ?` (BEGIN IMMEDIATE .. COMMIT) every
    `interval` seconds on a fixed schedule; a commit that overruns its slot delays the next one
    instead of causing a burst. Records (start, seconds or None on failure) per commit.

    Every body starts with the wall-clock time: SQLite does not write a page whose content an
    UPDATE leaves unchanged, so a rerun that replays the same seeded updates on a reused
    database would otherwise commit nothing at all."""

    def __init__(self, path, interval, max_id, bodies, seed):
        super().__init__(daemon=True)
        self.path, self.interval, self.max_id, self.bodies = path, interval, max_id, bodies
        self.rng = random.Random(seed)
        self.commits, self.errors = [], []
        self.stop = threading.Event()

    def run(self):
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA synchronous=NORMAL")
        due = time.monotonic()
        while not self.stop.is_set():
            row = self.rng.randrange(1, self.max_id + 1)
            body = "edited %.6f\n%s" % (time.time(), self.rng.choice(self.bodies))
            started = time.monotonic()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE notes SET body = ? WHERE id = ?", (body, row))
                conn.execute("COMMIT")
                self.commits.append((started, time.monotonic() - started))
            except sqlite3.Error as error:
                self.commits.append((started, None))
                self.errors.append(str(error))
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            due = max(due + self.interval, time.monotonic())
            time.sleep(max(0.0, due - time.monotonic()))
        conn.close()

    def between(self, start, end):
        """(start, seconds or None) of the commits that began in [start, end)."""
        return [(began, latency) for began, latency in list(self.commits) if start <= began < end]


def stats(commits, start):
    """Commit count, failures, latency percentiles, and how many took over 20 ms (with when the
    slowest began, in seconds after `start`)."""
    ok = sorted((latency, began) for began, latency in commits if latency is not None)
    failures = len(commits) - len(ok)
    if not ok:
        return "0 commits, %d failures" % failures

    def rank(q):
        return ok[min(len(ok) - 1, int(q * len(ok)))][0] * 1000

    slow = sum(1 for latency, _ in ok if latency > 0.020)
    return "%5d commits, %d failures, p50 %.2f ms, p99 %.2f ms, max %.2f ms (at +%.2f s), %d over 20 ms" % (
        len(ok), failures, rank(0.50), rank(0.99), ok[-1][0] * 1000, ok[-1][1] - start, slow)


def wal_size(wal):
    try:
        return os.path.getsize(wal)
    except OSError:
        return 0


def timed(command, wal, timeout=None):
    """Runs `command`, sampling the size of the WAL file every 50 ms (it only grows, unless the
    last connection closes). Returns (seconds, finished, result code, stdout, stderr,
    (WAL size at the start, largest WAL size seen), start)."""
    start, at_start = time.monotonic(), wal_size(wal)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    largest, finished = at_start, True
    while process.poll() is None:
        largest = max(largest, wal_size(wal))
        if timeout and time.monotonic() - start > timeout:
            process.kill()
            finished = False
            break
        time.sleep(0.05)
    out, err = process.communicate()
    return time.monotonic() - start, finished, process.returncode, out, err, (at_start, largest), start


def live_database(work, mib, seed, say):
    """The database for this size and seed: reused if present and large enough, else built."""
    path = os.path.join(work, "live-%dmib-seed%d.db" % (mib, seed))
    if os.path.exists(path):
        conn = sqlite3.connect(path)
        try:
            size = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
            rows = conn.execute("SELECT max(id) FROM notes").fetchone()[0]
        except sqlite3.Error:
            size, rows = 0, 0
        conn.close()
        if size >= mib * MIB and rows:
            say("reusing %s (%s)" % (path, human(size)))
            return path
    build_database(path, mib, seed, median=1000, say=say)
    return path


def capture_cairn(cairn, repo, database, wal):
    shutil.rmtree(repo, ignore_errors=True)
    run([cairn, "--repo", repo, "init"])
    seconds, _, code, out, err, largest, start = timed(
        [cairn, "--repo", repo, "--json", "snapshot", "--sqlite", database], wal)
    if code != 0:
        sys.exit("cairn snapshot failed (%d): %s%s" % (code, out, err))
    return seconds, json.loads(out)["summary"], largest, start


def remove_copy(copy):
    """Removes a .backup copy and the rollback journal a killed .backup leaves beside it."""
    for path in (copy, copy + "-journal"):
        if os.path.exists(path):
            os.remove(path)


def capture_backup(database, copy, wal, timeout):
    remove_copy(copy)
    seconds, finished, code, out, err, largest, start = timed(
        ["sqlite3", database, ".backup '%s'" % copy], wal, timeout)
    outcome = "finished" if finished and code == 0 else (
        "did NOT finish within %d s (killed)" % timeout if not finished else "failed (%d): %s" % (code, err.strip()))
    return seconds, outcome, largest, start


def under_writer(args, cairn, work, database, say):
    """Baseline, cairn snapshot, .backup, all while the writer runs. Returns the writer and the
    phases as (label, start, end, description of the capture)."""
    wal, repo, copy = database + "-wal", os.path.join(work, "live-repo"), os.path.join(work, "live-copy.db")
    conn = sqlite3.connect(database)
    max_id = conn.execute("SELECT max(id) FROM notes").fetchone()[0]
    conn.close()
    text = TextSource(load_corpus(args.seed + 2), random.Random(args.seed + 2), median=1000)
    writer = Writer(database, args.interval_ms / 1000, max_id, [text.body() for _ in range(2000)], args.seed)
    say("writer running; baseline")
    writer.start()
    start = time.monotonic()
    time.sleep(args.baseline)
    phases = [("baseline (%.0f s, writer only)" % args.baseline, start, time.monotonic(), None)]
    say("cairn snapshot under the writer")
    seconds, summary, largest, start = capture_cairn(cairn, repo, database, wal)
    phases.append(("cairn snapshot", start, time.monotonic(),
                   "%.2f s (%s read, %s stored); WAL file %s at the start, %s at most" % (
                       seconds, human(summary["bytes"]), human(summary["stored_bytes_added"]),
                       human(largest[0]), human(largest[1]))))
    time.sleep(2)
    say(".backup under the writer")
    seconds, outcome, largest, start = capture_backup(database, copy, wal, args.backup_timeout)
    phases.append((".backup", start, time.monotonic(), "%.2f s, %s; WAL file %s at the start, %s at most" %
                   (seconds, outcome, human(largest[0]), human(largest[1]))))
    time.sleep(1)
    writer.stop.set()
    writer.join()
    return writer, max_id, phases


def verify_capture(cairn, work, database):
    """Restores the latest snapshot in the live repository: (integrity_check, row count)."""
    repo, target = os.path.join(work, "live-repo"), os.path.join(work, "live-restored")
    shutil.rmtree(target, ignore_errors=True)
    run([cairn, "--repo", repo, "restore", "latest", "--target", target])
    restored = sqlite3.connect("file:%s?mode=ro" % os.path.join(target, os.path.basename(database)), uri=True)
    verified = (restored.execute("PRAGMA integrity_check").fetchone()[0],
                restored.execute("SELECT count(*) FROM notes").fetchone()[0])
    restored.close()
    shutil.rmtree(target)
    return verified


def idle_captures(cairn, work, database):
    """Both captures again without the writer: (cairn seconds, .backup seconds, outcome)."""
    wal, repo, copy = database + "-wal", os.path.join(work, "live-repo"), os.path.join(work, "live-copy.db")
    cairn_seconds = capture_cairn(cairn, repo, database, wal)[0]
    backup_seconds, outcome = capture_backup(database, copy, wal, None)[:2]
    return cairn_seconds, backup_seconds, outcome


def report(args, size, max_id, writer, phases, verified, idle):
    print("sqlite_live: database %d bytes (%s), %d rows, WAL mode; writer: 1-row UPDATE every %.0f ms, "
          "busy_timeout=5000, synchronous=NORMAL" % (size, human(size), max_id, args.interval_ms))
    for label, start, end, description in phases:
        if description:
            print("%s: %s" % (label, description))
            label = "  writer during %s" % label
        print("%-32s %s" % (label + ":", stats(writer.between(start, end), start)))
    if writer.errors:
        print("writer errors: %s" % "; ".join(sorted(set(writer.errors))))
    if verified:
        print("cairn capture under load restored: integrity_check %s, %d rows" % verified)
    if idle:
        print("without the writer: cairn snapshot %.2f s; .backup %.2f s (%s)" % idle)
    _, start, end, _ = phases[1]
    during = [latency for _, latency in writer.between(start, end)]
    ok = sorted(x for x in during if x is not None)
    p99 = ok[min(len(ok) - 1, int(0.99 * len(ok)))] * 1000 if ok else float("inf")
    print("target during cairn snapshot (zero failures, p99 < 20 ms, >= 1 GiB): %s" % (
        "met" if len(ok) == len(during) and p99 < 20 and size >= 1 << 30 else "NOT met"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cairn", required=True, help="path to the cairn binary")
    parser.add_argument("--work", required=True, help="scratch directory (the database is kept here)")
    parser.add_argument("--mib", type=int, default=1024, help="database size in MiB (default 1024)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval-ms", type=float, default=10.0, help="writer period (default 10 ms)")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of writer-only baseline")
    parser.add_argument("--backup-timeout", type=float, default=120.0,
                        help="give up on .backup under the writer after this many seconds")
    parser.add_argument("--no-idle", action="store_true", help="skip the captures without the writer")
    parser.add_argument("--no-verify", action="store_true", help="skip restoring cairn's capture under load")
    args = parser.parse_args()
    cairn, work = os.path.abspath(args.cairn), os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    say = lambda line: print(line, file=sys.stderr, flush=True)

    database = live_database(work, args.mib, args.seed, say)
    size = os.path.getsize(database)
    writer, max_id, phases = under_writer(args, cairn, work, database, say)
    say("restoring cairn's capture")
    verified = None if args.no_verify else verify_capture(cairn, work, database)
    say("idle captures")
    idle = None if args.no_idle else idle_captures(cairn, work, database)
    shutil.rmtree(os.path.join(work, "live-repo"), ignore_errors=True)
    remove_copy(os.path.join(work, "live-copy.db"))
    report(args, size, max_id, writer, phases, verified, idle)


if __name__ == "__main__":
    main()
