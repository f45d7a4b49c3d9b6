#!/usr/bin/env python3
"""What a second cairn snapshot of a live SQLite database adds after one day of churn.

The reference is what actually changed: the pages that differ between two page-exact copies
(`sqlite3 DB ".backup"`) of the database before and after the churn, compressed with zstd -3.
cairn cuts a database image into page-aligned chunks, so one changed page costs its whole chunk:
the script also prints that chunk-granular floor for several fixed chunk sizes (marking the one
that matches cairn's new data blobs: one page since commit a79333d, 64 KiB before), and breaks
down the bytes cairn's second snapshot wrote (data blobs, tree blob, pack trailers, index,
snapshot, audit) so a gap to the reference can be explained. With --restic the same two states
go through restic.

Acceptance target (benches/README.md): cairn's second snapshot stores at most 3x the
zstd-compressed changed pages.

Standard library only; needs the sqlite3 and zstd command-line tools. Deterministic for a given
--seed and machine (the text comes from documentation installed on this machine).
"""

import argparse
import functools
import gzip
import html
import json
import math
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
FLOOR_CHUNKS = (8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10)  # fixed chunk sizes to compare
WIDE_CHUNK = 64 << 10  # cairn's SQLite chunk size before one chunk per page (commit a79333d)
ZSTD_LEVEL = 3  # cairn's default compression level (store-format/config.md)
BASE_TIME = 1_700_000_000  # `created` of the first row; rows are one minute apart

# --- real text -------------------------------------------------------------------------------

MARKUP = re.compile(r"<script.*?</script>|<style.*?</style>|<[^>]*>", re.S | re.I)
TEXT_SUFFIXES = (".html", ".htm", ".md", ".txt", ".gz")


def documentation_roots():
    """Directories of installed documentation: the Rust toolchain's HTML books and API docs,
    and Debian's /usr/share/doc (READMEs, changelogs, copyright files)."""
    roots = []
    try:
        sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True)
        roots.append(os.path.join(sysroot.stdout.strip(), "share", "doc"))
    except (OSError, subprocess.CalledProcessError):
        pass
    roots.append("/usr/share/doc")
    return [root for root in roots if os.path.isdir(root)]


def read_text(path):
    """The file's text with HTML markup crudely stripped and entities decoded."""
    with open(path, "rb") as handle:
        raw = handle.read(4 * MIB)
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            return ""
    text = raw.decode("utf-8", errors="replace")
    if path.endswith((".html", ".htm")):
        text = html.unescape(MARKUP.sub("\n", text))
    return text


@functools.lru_cache(maxsize=2)
def load_corpus(seed, max_bytes=48 * MIB):
    """Distinct lines (whitespace collapsed, at least 20 characters) of real documentation, in
    file order, so that consecutive lines read like a paragraph. Files are visited in a seeded
    random order until `max_bytes` of text is collected."""
    files = []
    for root in documentation_roots():
        for directory, _, names in os.walk(root):
            files.extend(os.path.join(directory, n) for n in names if n.endswith(TEXT_SUFFIXES)
                         or n.startswith(("README", "copyright", "changelog")))
    files.sort()
    random.Random(seed).shuffle(files)
    lines, seen, total = [], set(), 0
    for path in files:
        try:
            text = read_text(path)
        except OSError:
            continue
        for line in text.splitlines():
            line = " ".join(line.split())
            if len(line) < 20 or line in seen:
                continue
            seen.add(line)
            lines.append(line)
            total += len(line) + 1
        if total >= max_bytes:
            break
    if len(lines) < 1000:
        sys.exit("too little documentation text found (need rustc's share/doc or /usr/share/doc)")
    return lines


class TextSource:
    """Bodies of real text: consecutive corpus lines from a random starting point, cut to a
    target length. Lengths follow a log-normal distribution (median `median` characters)."""

    def __init__(self, lines, rng, median=350):
        self.lines, self.rng, self.median = lines, rng, median

    def length(self):
        return int(min(8000, max(30, self.rng.lognormvariate(math.log(self.median), 0.8))))

    def body(self, length=None):
        length = length or self.length()
        index = self.rng.randrange(len(self.lines))
        parts, size = [], 0
        while size < length:
            line = self.lines[index % len(self.lines)]
            parts.append(line)
            size += len(line) + 1
            index += 1
        return "\n".join(parts)[:length]

    def author(self):
        return "author%03d@example.org" % int(self.rng.paretovariate(1.2) * 7 % 500)


# --- building the database --------------------------------------------------------------------

SCHEMA = """
CREATE TABLE notes(id INTEGER PRIMARY KEY, created INTEGER NOT NULL, author TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX notes_created ON notes(created);
"""


def database_bytes(conn):
    return conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]


def build_database(path, mib, seed, median=350, say=print):
    """Grows a WAL-mode `notes` database of real text to about `mib` MiB, then checkpoints it
    (TRUNCATE) so the main file holds everything. Rows arrive in `created` order, as an
    application's would."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    rng = random.Random(seed)
    started = time.monotonic()
    text = TextSource(load_corpus(seed), rng, median)
    say("corpus: %d distinct lines of documentation (%.1f s)" % (len(text.lines), time.monotonic() - started))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    next_id, target = 1, mib * MIB
    while database_bytes(conn) < target:
        rows = []
        for _ in range(5000):
            rows.append((next_id, BASE_TIME + next_id * 60 + rng.randrange(60), text.author(), text.body()))
            next_id += 1
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO notes VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    say("built %s: %d rows, %.1f MiB in %.1f s" % (path, next_id - 1, os.path.getsize(path) / MIB,
                                                  time.monotonic() - started))


def cached_database(work, name, mib, seed, median=350, say=print):
    """A pristine database of `mib` MiB, built once per (name, size, seed) and kept in `work`."""
    path = os.path.join(work, "%s-%dmib-seed%d.db" % (name, mib, seed))
    if os.path.exists(path) and not os.path.exists(path + "-wal"):
        say("reusing %s" % path)
    else:
        build_database(path, mib, seed, median, say)
    return path


# --- one day of churn --------------------------------------------------------------------------

def churn(path, seed, checkpoint, transactions=24, day=1):
    """Updates 1% of rows (80% of them among the newest 10%, the rest uniform) to other real text
    of similar length, inserts 0.5% new rows and deletes 0.2% chosen uniformly, spread over
    `transactions` commits (one per hour of the day). With checkpoint == "passive" SQLite's
    automatic checkpoints stay on and a final PASSIVE checkpoint runs, as in a normal
    application; with "none" automatic checkpoints are off and everything stays in the WAL."""
    rng = random.Random(seed + day)  # day 1 is the one-day run's churn, byte for byte
    text = TextSource(load_corpus(seed + 1), rng)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    if checkpoint == "none":
        conn.execute("PRAGMA wal_autocheckpoint=0")
    ids = [row[0] for row in conn.execute("SELECT id FROM notes ORDER BY id")]
    rows = len(ids)
    recent = ids[-max(1, rows // 10):]
    n_update, n_insert, n_delete = rows // 100, rows // 200, rows // 500
    updates = set(rng.sample(recent, min(len(recent), n_update * 8 // 10)))
    while len(updates) < n_update:
        updates.add(rng.choice(ids))
    deletes = set()
    while len(deletes) < n_delete:
        candidate = rng.choice(ids)
        if candidate not in updates:
            deletes.add(candidate)
    lengths = dict(conn.execute("SELECT id, length(body) FROM notes WHERE id IN (%s)" %
                                ",".join(map(str, updates))).fetchall())
    actions = [("update", i) for i in updates] + [("delete", i) for i in deletes] + [("insert", None)] * n_insert
    rng.shuffle(actions)
    next_id, per_transaction = ids[-1] + 1, math.ceil(len(actions) / transactions)
    for start in range(0, len(actions), per_transaction):
        conn.execute("BEGIN")
        for action, row in actions[start:start + per_transaction]:
            if action == "update":
                length = max(30, int(lengths[row] * rng.uniform(0.9, 1.1)))
                conn.execute("UPDATE notes SET body = ? WHERE id = ?", (text.body(length), row))
            elif action == "delete":
                conn.execute("DELETE FROM notes WHERE id = ?", (row,))
            else:
                conn.execute("INSERT INTO notes VALUES (?, ?, ?, ?)",
                             (next_id, BASE_TIME + next_id * 60, text.author(), text.body()))
                next_id += 1
        conn.execute("COMMIT")
    wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
    if checkpoint == "passive":
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    conn.close()
    return {"rows_before": rows, "updated": n_update, "inserted": n_insert, "deleted": n_delete,
            "transactions": math.ceil(len(actions) / per_transaction), "wal_bytes_before_checkpoint": wal}


# --- the reference: changed pages, compressed --------------------------------------------------

def zstd_size(data):
    """zstd -3 size of `data` as one frame (no checksum, as cairn's blobs have none)."""
    out = subprocess.run(["zstd", "-%d" % ZSTD_LEVEL, "-q", "-c", "--no-check"], input=data,
                         capture_output=True, check=True)
    return len(out.stdout)


def zstd_sizes(blocks, scratch):
    """Sum of zstd -3 sizes of each block compressed alone (one zstd run over a directory in
    `scratch`), as cairn compresses each blob alone."""
    if not blocks:
        return 0
    with tempfile.TemporaryDirectory(dir=scratch) as directory:
        for number, block in enumerate(blocks):
            with open(os.path.join(directory, "%08d" % number), "wb") as handle:
                handle.write(block)
        subprocess.run(["zstd", "-%d" % ZSTD_LEVEL, "-q", "-r", "--rm", "--no-check", directory], check=True)
        return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))


def page_diff(before_path, after_path, page_size):
    """Compares two page-exact copies page by page. Returns the page counts, and the numbers
    (0-based) and contents of the pages of `after` that are changed or new."""
    numbers, pages = [], []
    with open(before_path, "rb") as before, open(after_path, "rb") as after:
        number = 0
        while True:
            old, page = before.read(page_size), after.read(page_size)
            if not page:
                break
            if old != page:
                numbers.append(number)
                pages.append(page)
            number += 1
    pages_before = os.path.getsize(before_path) // page_size
    return {"pages_before": pages_before, "pages_after": number, "numbers": numbers, "pages": pages,
            "new": sum(1 for n in numbers if n >= pages_before)}


def chunks_holding(path, numbers, page_size, chunk_bytes):
    """The fixed `chunk_bytes` chunks of the file at `path` that hold any of the pages."""
    with open(path, "rb") as handle:
        chunks = []
        for chunk in sorted({n * page_size // chunk_bytes for n in numbers}):
            handle.seek(chunk * chunk_bytes)
            chunks.append(handle.read(chunk_bytes))
    return chunks


def page_owners(path):
    """Page number (0-based) -> name of the b-tree that owns it, from the dbstat table; pages
    it does not list are free (or the lock-byte page)."""
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return {pageno - 1: name for pageno, name in conn.execute("SELECT pageno, name FROM dbstat")}
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


# --- cairn and restic --------------------------------------------------------------------------

def run(command, env=None, check=True):
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        sys.exit("failed (%d): %s\n%s%s" % (result.returncode, " ".join(command), result.stdout, result.stderr))
    return result, time.monotonic() - started


def du_bytes(path):
    """(apparent bytes, allocated bytes) of a directory, as `du -sb` and `du -sB1` report them."""
    apparent = int(subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()[0])
    allocated = int(subprocess.run(["du", "-sB1", path], capture_output=True, text=True).stdout.split()[0])
    return apparent, allocated


def repository_files(repo):
    found = {}
    for directory, _, names in os.walk(repo):
        for name in names:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, repo)] = os.path.getsize(path)
    return found


def pack_breakdown(path):
    """Blob counts and stored/plain bytes per kind from a pack's trailer (store-format/pack.md)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[-8:] != b"CAIRNPKT":
        return None
    if data[10] != 0:
        # Sealed entries (an encrypted repository): the kinds cannot be told without the key.
        count = int.from_bytes(data[-48:-44], "little")
        return {"sealed": (count, len(data) - 64 - 48 * count - 40, 0)}
    count = int.from_bytes(data[-48:-44], "little")
    start = len(data) - 48 - 48 * count
    kinds = {}
    for n in range(count):
        entry = data[start + 48 * n:start + 48 * (n + 1)]
        kind = "data" if entry[32] == 0 else "tree"
        blobs, stored, plain = kinds.get(kind, (0, 0, 0))
        kinds[kind] = (blobs + 1, stored + int.from_bytes(entry[40:44], "little"),
                       plain + int.from_bytes(entry[44:48], "little"))
    return kinds


def repository_growth(repo, before):
    """What the files new since `before` hold, by part of the repository."""
    after = repository_files(repo)
    parts = {"data": [0, 0, 0], "tree": [0, 0, 0], "sealed": [0, 0, 0], "pack overhead": [0, 0, 0]}
    for relpath, size in sorted(after.items()):
        if relpath in before:
            continue
        top = relpath.split(os.sep)[0]
        kinds = pack_breakdown(os.path.join(repo, relpath)) if top == "packs" else None
        if kinds is None:
            entry = parts.setdefault(top, [0, 0, 0])
            entry[0] += 1
            entry[1] += size
            continue
        overhead = size
        for kind, (blobs, stored, plain) in kinds.items():
            parts[kind][0] += blobs
            parts[kind][1] += stored
            parts[kind][2] += plain
            overhead -= stored
        parts["pack overhead"][0] += 1
        parts["pack overhead"][1] += overhead
    return parts


def cairn_snapshot(cairn, repo, database):
    result, seconds = run([cairn, "--repo", repo, "--json", "snapshot", "--sqlite", database])
    return json.loads(result.stdout), seconds


def restic_backups(work, states):
    """Backs up each state as the same path restic-src/app.db into a fresh repository; returns
    per backup (summary, growth in apparent bytes, allocated bytes, seconds)."""
    repo, source, cache = (os.path.join(work, name) for name in ("restic-repo", "restic-src", "restic-cache"))
    for path in (repo, source, cache):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(source)
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo, RESTIC_CACHE_DIR=cache)
    run(["restic", "init"], env=env)
    results, size = [], du_bytes(repo)
    for state in states:
        shutil.copyfile(state, os.path.join(source, "app.db"))
        result, seconds = run(["restic", "backup", "--json", "--host", "bench", source], env=env)
        summary = [json.loads(line) for line in result.stdout.splitlines() if '"summary"' in line][-1]
        grown = du_bytes(repo)
        results.append((summary, grown[0] - size[0], grown[1] - size[1], seconds))
        size = grown
    version = run(["restic", "version"])[0].stdout.split()[1]
    shutil.rmtree(repo)
    shutil.rmtree(source)
    shutil.rmtree(cache, ignore_errors=True)
    return version, results


# --- the run -----------------------------------------------------------------------------------

def human(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return "%.2f %s" % (n / size, unit)
    return "%d B" % n


def backup_copy(database, target):
    if os.path.exists(target):
        os.remove(target)
    run(["sqlite3", database, ".backup '%s'" % target])


def verify_restore(cairn, repo, work, database):
    """Restores the latest snapshot and checks it: integrity_check and the row count."""
    target = os.path.join(work, "restored")
    shutil.rmtree(target, ignore_errors=True)
    run([cairn, "--repo", repo, "restore", "latest", "--target", target])
    restored = os.path.join(target, os.path.basename(database))
    conn = sqlite3.connect("file:%s?mode=ro" % restored, uri=True)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    count = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
    conn.close()
    live = sqlite3.connect(database)
    live_count = live.execute("SELECT count(*) FROM notes").fetchone()[0]
    live.close()
    shutil.rmtree(target)
    return integrity, count, live_count


def measure_cairn(cairn, run_dir, pristine, checkpoint, seed, say, days=1, minutes=None, plain=False):
    """Snapshot, churn, snapshot; page-exact copies of both states alongside. With `days` > 1,
    the later days follow, each a churn and a snapshot measured against its own floor."""
    database, repo = os.path.join(run_dir, "app.db"), os.path.join(run_dir, "cairn-repo")
    shutil.copyfile(pristine, database)
    states = os.path.join(run_dir, "state1.db"), os.path.join(run_dir, "state2.db")
    run([cairn, "--repo", repo, "init"] + (["--encryption", "none"] if plain else []))
    say("snapshot 1")
    first, first_seconds = cairn_snapshot(cairn, repo, database)
    backup_copy(database, states[0])
    say("churn")
    day = churn(database, seed, checkpoint)
    before_files, before_size = repository_files(repo), du_bytes(repo)
    say("snapshot 2")
    second, second_seconds = cairn_snapshot(cairn, repo, database)
    after_size = du_bytes(repo)
    backup_copy(database, states[1])
    growth = repository_growth(repo, before_files)
    daily = [day_result(1, states, run_dir, after_size[0] - before_size[0], growth, second_seconds)]
    previous = os.path.join(run_dir, "previous.db")
    if days > 1:
        # The one-day report compares the first two states: keep the second apart.
        states = (states[0], os.path.join(run_dir, "day1.db"))
        shutil.copyfile(os.path.join(run_dir, "state2.db"), states[1])
    latest = os.path.join(run_dir, "state2.db")
    started = time.monotonic()
    for number in range(2, days + 1):
        if minutes is not None and time.monotonic() - started > 60 * minutes:
            say("stopped after %d days: --max-minutes %s reached" % (number - 1, minutes))
            break
        shutil.copyfile(latest, previous)
        say("day %d of %d" % (number, days))
        churn(database, seed, checkpoint, day=number)
        files, size = repository_files(repo), du_bytes(repo)
        _, seconds = cairn_snapshot(cairn, repo, database)
        backup_copy(database, latest)
        grown = du_bytes(repo)[0] - size[0]
        daily.append(day_result(number, (previous, latest), run_dir, grown, repository_growth(repo, files), seconds))
        print_day(daily[-1])
    say("verifying the restore")
    snapshots = json.loads(run([cairn, "--repo", repo, "--json", "snapshots"])[0].stdout)
    restore_seconds = [timed_restore(cairn, repo, run_dir, snapshots[i]["id"]) for i in (0, -1)]
    return {"database": database, "repo": repo, "states": states, "day": day,
            "first": first, "first_seconds": first_seconds, "second": second, "second_seconds": second_seconds,
            "grown": after_size[0] - before_size[0], "grown_allocated": after_size[1] - before_size[1],
            "growth": growth, "daily": daily, "restore_seconds": restore_seconds,
            "restore": verify_restore(cairn, repo, run_dir, database)}


def day_result(number, states, scratch, grown, growth, seconds):
    """One day's floors (its changed and new pages, zstd -3 all together and each alone) beside
    what cairn's repository grew by, and how much of that is trees and list blobs."""
    conn = sqlite3.connect("file:%s?mode=ro" % states[1], uri=True)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    diff = page_diff(states[0], states[1], page_size)
    return {"day": number, "changed": len(diff["pages"]), "pages": diff["pages_after"],
            "together": zstd_size(b"".join(diff["pages"])), "alone": zstd_sizes(diff["pages"], scratch),
            "grown": grown, "tree": growth["tree"][1], "seconds": seconds}


def print_day(d):
    print("day %3d: %5d of %6d pages changed; floors %s together, %s alone; repository +%s (trees and lists %s), "
          "%.2fx together, %.2fx alone; snapshot %.1f s" % (
              d["day"], d["changed"], d["pages"], human(d["together"]), human(d["alone"]), human(d["grown"]),
              human(d["tree"]), d["grown"] / d["together"], d["grown"] / d["alone"], d["seconds"]), flush=True)


def timed_restore(cairn, repo, work, snapshot):
    """Seconds to restore `snapshot` into a fresh directory (removed after)."""
    target = os.path.join(work, "timed-restore")
    shutil.rmtree(target, ignore_errors=True)
    _, seconds = run([cairn, "--repo", repo, "restore", snapshot, "--target", target])
    shutil.rmtree(target)
    return seconds


def report_days(got):
    daily = got["daily"]
    if len(daily) > 1:
        print_day(daily[0])
    total = {key: sum(d[key] for d in daily) for key in ("together", "alone", "grown", "tree")}
    if any(d["tree"] == 0 for d in daily):
        print("(trees and lists: not told apart from data in an encrypted repository; see --plain)")
    print("%d days: repository growth %s (trees and lists %s); sum of daily floors %s all together, %s each page "
          "alone; %.2fx all together, %.2fx each alone" % (
              len(daily), human(total["grown"]), human(total["tree"]), human(total["together"]),
              human(total["alone"]), total["grown"] / total["together"], total["grown"] / total["alone"]))
    first, last = got["restore_seconds"]
    print("restore: first snapshot %.2f s, last snapshot %.2f s" % (first, last))


def measure_reference(state1, state2, scratch):
    """The changed and new pages, compressed together and alone; the same for the fixed chunks
    of several sizes that hold them; which b-tree owns them."""
    conn = sqlite3.connect(state2)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    diff = page_diff(state1, state2, page_size)
    floors = {}  # chunk size -> (chunks holding a changed page, chunks in the file, zstd sizes summed)
    for chunk_bytes in (page_size,) + tuple(size for size in FLOOR_CHUNKS if size > page_size):
        chunks = chunks_holding(state2, diff["numbers"], page_size, chunk_bytes)
        floors[chunk_bytes] = (len(chunks), math.ceil(os.path.getsize(state2) / chunk_bytes),
                               zstd_sizes(chunks, scratch))
    owners, by_owner = page_owners(state2), {}
    for number in diff["numbers"]:
        by_owner.setdefault(owners.get(number, "(free)"), []).append(number)
    return dict(diff, page_size=page_size, floors=floors, by_owner=by_owner,
                together=zstd_size(b"".join(diff["pages"])), alone=zstd_sizes(diff["pages"], scratch))


def cairn_chunk_bytes(got):
    """The average plain size of the data blobs cairn's second snapshot added."""
    blobs, _, plain = got["growth"]["data"]
    return plain / blobs if blobs else 0


def report_reference(ref, size, day, checkpoint, cairn_chunk):
    pages, page_size = ref["pages"], ref["page_size"]
    print("database: %d bytes (%s), page size %d, %d rows before the churn" % (
        size, human(size), page_size, day["rows_before"]))
    print("churn: %d updated (80%% among the newest 10%%), %d inserted, %d deleted, in %d transactions; "
          "WAL %s before checkpoint; checkpoint: %s" % (
              day["updated"], day["inserted"], day["deleted"], day["transactions"],
              human(day["wal_bytes_before_checkpoint"]),
              "automatic + PRAGMA wal_checkpoint(PASSIVE)" if checkpoint == "passive" else "none"))
    print("pages: %d before, %d after; %d changed, %d new (%.2f%% of the pages)" % (
        ref["pages_before"], ref["pages_after"], len(pages) - ref["new"], ref["new"],
        100.0 * len(pages) / ref["pages_after"]))
    print("changed+new pages by b-tree: %s" % "; ".join(
        "%s %d (in %d of the 64 KiB chunks)" % (name, len(numbers), len({n * page_size // WIDE_CHUNK
                                                                          for n in numbers}))
        for name, numbers in sorted(ref["by_owner"].items(), key=lambda item: -len(item[1]))))
    print("reference: changed+new pages %s plain; zstd -3 all together %d bytes (%s); "
          "each page alone, summed %d bytes (%s)" % (human(len(pages) * page_size), ref["together"],
                                                      human(ref["together"]), ref["alone"], human(ref["alone"])))
    for chunk_bytes, (count, total, stored) in ref["floors"].items():
        print("%3d KiB chunks holding a changed page: %5d of %6d; zstd -3 each alone, summed %d bytes (%s), "
              "%.2fx the reference%s" % (chunk_bytes >> 10, count, total, stored, human(stored),
                                         stored / ref["together"],
                                         "  <- cairn's chunk size" if chunk_bytes == cairn_chunk else ""))


def report_cairn(got, ref):
    together, alone, chunk = ref["together"], ref["alone"], round(cairn_chunk_bytes(got))
    floor = ref["floors"][chunk][2] if chunk in ref["floors"] else float("nan")
    first, second, grown = got["first"]["summary"], got["second"], got["grown"]
    stored = second["summary"]["stored_bytes_added"]
    print("cairn snapshot 1: %.1f s, stored_bytes_added %d (%s)" % (
        got["first_seconds"], first["stored_bytes_added"], human(first["stored_bytes_added"])))
    print("cairn snapshot 2: %.1f s, bytes_added %d, stored_bytes_added %d (%s), packs_written %d, "
          "repository growth %d bytes (%s; %d allocated)" % (
              got["second_seconds"], second["summary"]["bytes_added"], stored, human(stored),
              second["packs_written"], grown, human(grown), got["grown_allocated"]))
    for part, (count, size, plain) in got["growth"].items():
        detail = ", %s plain" % human(plain) if plain else ""
        print("  %-14s %6d %s, %d bytes (%s%s)" % (
            part, count, "blobs" if part in ("data", "tree") else "files", size, human(size), detail))
    print("ratio cairn/reference (stored_bytes_added): %.2fx to all-together, %.2fx to each-page-alone, "
          "%.2fx to the floor at cairn's chunk size (%d bytes per new data blob)" % (
              stored / together, stored / alone, stored / floor, chunk))
    print("ratio cairn/reference (repository growth): %.2fx to all-together, %.2fx to each-page-alone" % (
        grown / together, grown / alone))
    print("target: at most 3x -> %s" % ("met" if stored <= 3 * together else "NOT met"))
    integrity, restored_rows, live_rows = got["restore"]
    print("restore of snapshot 2: integrity_check %s, %d rows restored, %d rows live -> %s" % (
        integrity, restored_rows, live_rows, "ok" if integrity == "ok" and restored_rows == live_rows else "FAILED"))


def report_restic(restic, ref, cairn_grown):
    version, results = restic
    for number, (summary, grew, allocated, seconds) in enumerate(results, 1):
        print("restic %s backup %d: %.1f s, data_added %d (%s), repository growth %d bytes (%s; %d allocated)" % (
            version, number, seconds, summary["data_added"], human(summary["data_added"]), grew, human(grew),
            allocated))
    grew = results[1][1]
    print("ratio restic/reference (repository growth, all-together): %.2fx; restic/cairn growth: %.2fx" % (
        grew / ref["together"], grew / cairn_grown))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cairn", required=True, help="path to the cairn binary")
    parser.add_argument("--work", required=True, help="scratch directory (the pristine database is cached here)")
    parser.add_argument("--mib", type=int, default=300, help="database size in MiB (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--checkpoint", choices=("passive", "none"), default="passive",
                        help="after the churn: automatic checkpoints plus PRAGMA wal_checkpoint(PASSIVE) "
                             "(default), or none with automatic checkpoints off")
    parser.add_argument("--restic", action="store_true", help="also back up both states with restic")
    parser.add_argument("--keep", action="store_true", help="keep the run's copies and repository")
    parser.add_argument("--days", type=int, default=1, help="daily churns, each followed by a snapshot (default 1)")
    parser.add_argument("--max-minutes", type=float, help="start no further day after this many minutes of days")
    parser.add_argument("--plain", action="store_true",
                        help="an unencrypted repository, whose pack trailers tell data from trees and lists")
    args = parser.parse_args()
    # The repository is encrypted, as `cairn init` makes it by default: each blob then carries
    # its 40-byte seal, which is part of what a user's repository grows by.
    os.environ.setdefault("CAIRN_PASSWORD", "bench")
    cairn, work = os.path.abspath(args.cairn), os.path.abspath(args.work)
    run_dir = os.path.join(work, "churn")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    say = lambda line: print(line, file=sys.stderr, flush=True)

    pristine = cached_database(work, "churn", args.mib, args.seed, say=say)
    got = measure_cairn(cairn, run_dir, pristine, args.checkpoint, args.seed, say, args.days, args.max_minutes,
                        args.plain)
    say("comparing pages")
    state1, state2 = got["states"]
    ref = measure_reference(state1, state2, run_dir)
    restic = restic_backups(run_dir, [state1, state2]) if args.restic else None

    print("sqlite_churn: %d MiB target, seed %d, %s" % (args.mib, args.seed,
                                                        run([cairn, "--version"])[0].stdout.strip()))
    report_reference(ref, os.path.getsize(state1), got["day"], args.checkpoint, round(cairn_chunk_bytes(got)))
    report_cairn(got, ref)
    report_days(got)
    if restic:
        report_restic(restic, ref, got["grown"])
    if not args.keep:
        shutil.rmtree(run_dir)


if __name__ == "__main__":
    main()
