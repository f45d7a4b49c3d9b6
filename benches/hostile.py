#!/usr/bin/env python3
"""The hostile campaign of issue 20 ("Nothing lost, nothing escapes"), rerunnable against any build.

usage: benches/hostile.py [--binary PATH] [--quick] [--workdir DIR] [--json OUT] [--only 1,3] [--seed N]

Parts (benches/README.md says what each trial checks):
  1  kill -9 of snapshot, prune and sync at 20+ moments each: local, S3 (a loopback moto_server
     this script starts and stops), sync local -> local and local -> S3
  2  three parallel snapshots racing a `forget --keep-last 2 --prune` loop
  3  single-byte corruptions of every repository file kind, plain and encrypted, and deleted files
  4  a full disk under the repository (a loop-mounted 64 MiB ext4 image) and under a restore target
  5  crafted cases from issue 20: a symlink planted in a restore target, a directory swapped for a
     symlink mid-walk, files rewritten or truncated mid-read, a closed stdout, deleting commands
     with an index file gone, a deep tree, protected snapshots, password precedence, config paths
The criterion throughout: nothing lost, nothing silent. Restored bytes are compared with hashes of
what the source held when the snapshot was taken. Prints a table of counts and one line per
failure; exits 1 if anything failed. Needs root (loop mount, tmpfs), moto_server and boto3.
"""

import argparse
import collections
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

MIB = 1 << 20
BUCKET = "hostile"
PASSWORD = "hostile campaign password"
AWS_SECRET = "hostile-secret-access-key-0123456789"
KILLED = -signal.SIGKILL
VERBOSE = False  # --verbose: a line per trial as it ends
MARKER = b"HOSTILE-PLAINTEXT-MARKER"  # in a source file: must never appear in an encrypted repository


# ---------------------------------------------------------------------------------------------
# Running cairn


@dataclass
class Run:
    argv: list
    rc: object  # exit code, -signal, or "timeout"
    out: str
    err: str
    secs: float

    @property
    def ok(self):
        return self.rc == 0

    @property
    def crashed(self):
        """A panic (101), an abort (134), a signal, or a hang: never acceptable."""
        return self.rc == "timeout" or (isinstance(self.rc, int) and (self.rc < 0 or self.rc in (101, 134)))

    def brief(self):
        lines = [line.strip() for line in (self.err or self.out).splitlines() if line.strip()]
        text = " | ".join(lines[-3:]) if lines else "(no output)"
        return f"exit {self.rc}: {text[:500]}"

    def json(self):
        return json.loads(self.out)

    def json_lines(self):
        return [json.loads(line) for line in self.out.splitlines() if line.strip().startswith("{")]


@dataclass
class Moment:
    """When to kill: after a delay, or as soon as `seen(added, removed)` holds in the repository."""

    label: str
    delay: Optional[float] = None
    seen: Optional[Callable] = None


@dataclass
class Kill:
    killed: bool  # the process was still running when SIGKILL arrived
    rc: object
    secs: float
    err: str


class Part:
    """One row of the table: trials that held, and a line per trial that did not."""

    def __init__(self, key, title):
        self.key, self.title = key, title
        self.trials = self.passed = 0
        self.failures, self.notes, self.log = [], [], []  # log: every trial, passed or not
        self.counts = collections.Counter()
        self.started = time.monotonic()
        self.seconds = 0.0

    def record(self, problems, label):
        self.trials += 1
        self.log.append({"trial": label, "ok": not problems, "problems": list(problems)})
        if VERBOSE:
            print(f"   {'ok  ' if not problems else 'FAIL'} {label}" + (f": {'; '.join(problems)}" if problems else ""),
                  flush=True)
        if problems:
            self.failures.append(f"{label}: " + "; ".join(problems))
        else:
            self.passed += 1
        return not problems

    def as_json(self):
        return {
            "part": self.key, "title": self.title, "trials": self.trials, "passed": self.passed,
            "failed": self.trials - self.passed, "seconds": round(self.seconds, 1),
            "counts": dict(self.counts), "failures": self.failures, "notes": self.notes, "trials_log": self.log,
        }


# ---------------------------------------------------------------------------------------------
# Source trees and what they held


def row_body(i):
    return f"row {i} " + hashlib.sha256(str(i).encode()).hexdigest() * 3


WORDS = [a + b for a in ("ka", "lo", "mi", "ne", "so", "tu", "ra", "ve", "zi", "po") for b in
         ("", "n", "ss", "rt", "lk", "mp", "ve", "x")]


def text_bytes(rng, size):
    words, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) + "\n"
        words.append(line)
        total += len(line)
    return "".join(words).encode()[:size]


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_HASHES = {}


def scan(root, hashes=True):
    """path -> ('d', mode) | ('f', mode, sha256, size) | ('l', target) | ('other', mode)."""
    out = {}

    def walk(directory, rel):
        with os.scandir(directory) as entries:
            for e in entries:
                path, st = rel + e.name, e.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    out[path] = ("l", os.readlink(e.path))
                elif stat.S_ISDIR(st.st_mode):
                    out[path] = ("d", stat.S_IMODE(st.st_mode))
                    walk(e.path, path + "/")
                elif stat.S_ISREG(st.st_mode):
                    key = (e.path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    digest = _HASHES.get(key) if hashes else None
                    if digest is None:
                        digest = sha256_file(e.path)
                        if hashes:
                            _HASHES[key] = digest
                    out[path] = ("f", stat.S_IMODE(st.st_mode), digest, st.st_size)
                else:
                    out[path] = ("other", st.st_mode)

    walk(root, "")
    return out


def db_problem(path, lo, hi):
    """None if the restored database is intact and holds rows 1..n, lo <= n <= hi."""
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?immutable=1", uri=True)
        try:
            check = con.execute("PRAGMA integrity_check").fetchall()
            if check != [("ok",)]:
                return f"integrity_check: {check[:2]}"
            rows = con.execute("SELECT id, body FROM rows ORDER BY id").fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        return f"not a readable database: {e}"
    if not lo <= len(rows) <= hi:
        return f"{len(rows)} rows, the source held {lo}..{hi} while the snapshot ran"
    for i, (rid, body) in enumerate(rows, 1):
        if rid != i or body != row_body(i):
            return f"row {i} is wrong"
    return None


def compare(expected, root):
    """What differs between a restored tree and the state a snapshot was taken of."""
    try:
        actual = scan(root, hashes=False)
    except OSError as e:
        return [f"cannot read the restored tree: {e}"]
    problems = []
    for path in sorted(set(expected) | set(actual)):
        want, got = expected.get(path), actual.get(path)
        if want is None:
            problems.append(f"{path}: restored but not in the source")
        elif got is None:
            problems.append(f"{path}: missing")
        elif want[0] == "db":
            p = db_problem(Path(root) / path, want[1], want[2]) if got[0] == "f" else f"a {got[0]}, not a file"
            if p:
                problems.append(f"{path}: {p}")
        elif want != got:
            if want[0] == "f" and got[0] == "f" and want[2] != got[2]:
                problems.append(f"{path}: content differs ({got[3]} bytes restored, {want[3]} in the source)")
            else:
                problems.append(f"{path}: {got} restored, {want} in the source")
    if len(problems) > 4:
        problems = problems[:4] + [f"... {len(problems) - 4} more"]
    return problems


class Source:
    """A realistic tree (text, random binaries, nested small files, links, modes, a WAL-mode
    SQLite database) that changes between snapshots, and what it held when."""

    def __init__(self, root, seed, files=300, random_mib=4, db=True):
        self.root, self.rng = Path(root), random.Random(seed)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        r, n_text, n_bin = self.rng, files * 2 // 5, max(4, files * 3 // 20)
        (self.root / "text").mkdir()
        for i in range(n_text):
            (self.root / f"text/t{i:03}.txt").write_bytes(text_bytes(r, r.randint(200, 40_000)))
        (self.root / "text/t000.txt").write_bytes(MARKER + b"\n" + text_bytes(r, 5000))
        (self.root / "bin").mkdir()
        average = random_mib * MIB // n_bin
        for i in range(n_bin):
            (self.root / f"bin/b{i:02}.bin").write_bytes(r.randbytes(r.randint(1024, 2 * average)))
        for i in range(files - n_text - n_bin - 6):
            d = self.root / f"nest/d{i % 6}/e{i % 4}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:03}").write_bytes(r.randbytes(r.choice([0, 1, 100, 4096, r.randint(0, 8192)])))
        (self.root / "empty/a/b").mkdir(parents=True)
        (self.root / "links").mkdir()
        os.symlink("../text/t001.txt", self.root / "links/to-text")
        os.symlink("/nonexistent/dangling", self.root / "links/dangling")
        os.symlink("../nest", self.root / "links/to-dir")
        for name, mode in (("script.sh", 0o755), ("secret.key", 0o600), ("readonly.txt", 0o444)):
            (self.root / name).write_bytes(text_bytes(r, 300))
            os.chmod(self.root / name, mode)
        self.db, self.rows = (self.root / "db/app.db") if db else None, 0
        if db:
            self.db.parent.mkdir()
            con = sqlite3.connect(self.db, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            con.close()
            self.insert(300)

    def connect(self):
        con = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def insert(self, n, con=None):
        """Commits n rows; `rows` counts only committed ones."""
        own = con is None
        con = con or self.connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            for i in range(self.rows + 1, self.rows + n + 1):
                con.execute("INSERT INTO rows(id, body) VALUES (?, ?)", (i, row_body(i)))
            con.execute("COMMIT")
            self.rows += n
        finally:
            if own:
                con.close()

    def mutate(self, round_no, churn_mib):
        """A day's changes: edits, replaced binaries, a new and a deleted file, new rows, and a
        fresh random file of `churn_mib` MiB (replacing the previous round's) for real work."""
        r = self.rng
        for path in r.sample(sorted((self.root / "text").iterdir()), 3):
            with open(path, "ab") as f:
                f.write(text_bytes(r, r.randint(10, 3000)))
        for path in r.sample(sorted((self.root / "bin").iterdir()), 2):
            path.write_bytes(r.randbytes(r.randint(1024, 300_000)))
        nest = sorted(p for p in (self.root / "nest").rglob("*") if p.is_file())
        if nest:
            r.choice(nest).unlink()
        (self.root / f"nest/d{round_no % 6}/new-{round_no}").write_bytes(r.randbytes(r.randint(0, 20_000)))
        for old in self.root.glob("round-*.bin"):
            old.unlink()
        if churn_mib:
            (self.root / f"round-{round_no}.bin").write_bytes(r.randbytes(int(churn_mib * MIB)))
        if self.db:
            self.insert(25)

    def state(self):
        state = scan(self.root)
        if self.db:
            rel = str(self.db.relative_to(self.root))
            for suffix in ("-wal", "-shm", "-journal"):
                state.pop(rel + suffix, None)
            state[rel] = ("db", self.rows, self.rows)
        return state


class DbWriter(threading.Thread):
    """Commits small transactions to a source's database until stopped."""

    def __init__(self, source):
        super().__init__(daemon=True)
        self.source, self.halt, self.error = source, threading.Event(), None

    def run(self):
        try:
            con = self.source.connect()
            try:
                while not self.halt.is_set():
                    self.source.insert(3, con)
                    time.sleep(0.004)
            finally:
                con.close()
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self):
        self.halt.set()
        self.join()
        if self.error:
            raise RuntimeError(f"the database writer failed: {self.error}")


# ---------------------------------------------------------------------------------------------
# The loopback S3 server and repository locations


class Moto:
    def __init__(self, work):
        import boto3  # only needed for part 1

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = work / "moto.log"
        self.proc = subprocess.Popen(
            ["moto_server", "-H", "127.0.0.1", "-p", str(self.port)], stdin=subprocess.DEVNULL,
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.endpoint = f"http://127.0.0.1:{self.port}"
        started = time.monotonic()
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() - started > 60 or self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on port {self.port} (see {self.log})")
                time.sleep(0.1)
        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="hostile",
                                   aws_secret_access_key=AWS_SECRET, region_name="us-east-1")
        self.client.create_bucket(Bucket=BUCKET)

    def env(self):
        return {"AWS_ACCESS_KEY_ID": "hostile", "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def keys(self, prefix):
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                out[o["Key"][len(prefix) + 1:]] = o["Size"]
        return out

    def copy(self, source, dest):
        for key in self.keys(source):
            self.client.copy_object(Bucket=BUCKET, Key=f"{dest}/{key}", CopySource={"Bucket": BUCKET, "Key": f"{source}/{key}"})

    def delete(self, prefix):
        keys = list(self.keys(prefix))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"{prefix}/{k}"} for k in keys[i:i + 1000]]})

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


LOG_LINE = re.compile(rb'"(PUT|DELETE) (\S+) HTTP/[0-9.]+" (\d{3})')


class S3Watch:
    """Objects put and deleted under a prefix since creation, from moto's access log."""

    def __init__(self, moto, prefix):
        self.path, self.prefix = moto.log, f"/{BUCKET}/{prefix}/"
        self.pos, self.rest, self.added, self.removed = self.path.stat().st_size, b"", set(), set()

    def poll(self):
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        self.pos += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            m = LOG_LINE.search(line)
            if not m or not m.group(3).startswith(b"2"):
                continue
            key = urllib.parse.unquote(m.group(2).decode().split("?")[0])
            if key.startswith(self.prefix):
                (self.added if m.group(1) == b"PUT" else self.removed).add(key[len(self.prefix):])
        return self.added, self.removed


def local_files(root):
    """Relative names of a local repository's files, leaving out tmp/ and locks/."""
    root = str(root)
    out = {"config"} if os.path.exists(os.path.join(root, "config")) else set()
    for top in ("keys", "packs", "index", "snapshots", "audit"):
        for directory, _, names in os.walk(os.path.join(root, top)):
            out.update(os.path.relpath(os.path.join(directory, name), root) for name in names)
    return out


class LocalWatch:
    def __init__(self, root):
        self.root, self.base = root, local_files(root)

    def poll(self):
        now = local_files(self.root)
        return now - self.base, self.base - now


class Loc:
    """A repository location: a local directory or s3://hostile/<name>."""

    def __init__(self, campaign, kind, name):
        self.c, self.kind, self.name = campaign, kind, name
        if kind == "local":
            self.path = campaign.work / "repos" / name
            shutil.rmtree(self.path, ignore_errors=True)
            self.url = str(self.path)
        else:
            self.url = f"s3://{BUCKET}/{name}"
            campaign.moto.delete(name)

    def copy(self, name):
        dest = Loc(self.c, self.kind, name)
        if self.kind == "local":
            subprocess.run(["cp", "-a", str(self.path), str(dest.path)], check=True)
        else:
            self.c.moto.copy(self.name, name)
        return dest

    def watch(self):
        return LocalWatch(self.path) if self.kind == "local" else S3Watch(self.c.moto, self.name)

    def remove(self):
        if self.kind == "local":
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.c.moto.delete(self.name)


def added_in(directory, n=1):
    return lambda added, removed: sum(k.startswith(directory + "/") for k in added) >= n


def removed_any(added, removed):
    return any(k.startswith(("packs/", "index/")) for k in removed)


# ---------------------------------------------------------------------------------------------
# The campaign


class Campaign:
    def __init__(self, args):
        self.binary = Path(args.binary).resolve()
        self.work = Path(args.workdir).resolve()
        self.quick, self.rng, self.moto, self.case = args.quick, random.Random(args.seed), None, args.case
        self.parts, self.counter, self.background = [], 0, []
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            if line.split()[1].startswith(str(self.work) + "/"):
                subprocess.run(["umount", "-l", line.split()[1]])
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "repos").mkdir(parents=True)
        (self.work / "restores").mkdir()

    # -- running ---------------------------------------------------------------------------

    def env(self, password=PASSWORD, extra=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}
        if password is not None:
            env["CAIRN_PASSWORD"] = password
        if self.moto:
            env.update(self.moto.env())
        env.update(extra or {})
        return env

    def argv(self, args, repo):
        head = [str(self.binary)] + (["--repo", str(repo), "--lock-wait", "2m"] if repo is not None else [])
        return head + [str(a) for a in args]

    def cairn(self, args, repo=None, password=PASSWORD, env=None, timeout=600, cwd=None, discard_stdout=False):
        argv, started = self.argv(args, repo), time.monotonic()
        try:
            p = subprocess.run(argv, env=self.env(password, env), stdout=subprocess.DEVNULL if discard_stdout else
                               subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
            return Run(argv, p.returncode, (p.stdout or b"").decode(errors="replace"), p.stderr.decode(errors="replace"),
                       time.monotonic() - started)
        except subprocess.TimeoutExpired as e:
            return Run(argv, "timeout", (e.stdout or b"").decode(errors="replace"),
                       (e.stderr or b"").decode(errors="replace"), timeout)

    def must(self, args, repo=None, **kw):
        """A setup step: it must succeed, or the part cannot run."""
        r = self.cairn(args, repo, **kw)
        if not r.ok:
            raise RuntimeError(f"setup step `cairn {' '.join(map(str, args))}` failed: {r.brief()}")
        return r

    def kill(self, args, repo, moment, watch, timeout=300):
        """Starts cairn, waits for `moment`, sends SIGKILL; tells whether it was still running."""
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen(self.argv(args, repo), env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
        started = time.monotonic()
        if moment.delay is not None:
            deadline = started + moment.delay
            while proc.poll() is None and (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, 0.002))
        else:
            while proc.poll() is None and not moment.seen(*watch.poll()):
                if time.monotonic() - started > timeout:
                    break
                time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)  # a no-op once the process has been reaped
        rc = proc.wait()
        elapsed = time.monotonic() - started
        err.seek(0)
        return Kill(rc == KILLED, rc, elapsed, err.read().decode(errors="replace"))

    def scratch(self, name="t"):
        self.counter += 1
        return self.work / "restores" / f"{name}-{self.counter}"

    def snapshot_ids(self, repo, problems):
        r = self.cairn(["--json", "snapshots"], repo)
        if not r.ok:
            problems.append(f"the repository does not list its snapshots: {r.brief()}")
            return None
        return [s["id"] for s in r.json()]

    def restore_problem(self, repo, sid, expected, extra=()):
        target = self.scratch()
        r = self.cairn(["--quiet", "restore", sid, "--target", target, *extra], repo)
        try:
            if r.crashed:
                return f"restore {sid[:8]} crashed: {r.brief()}"
            if not r.ok:
                return f"snapshot {sid[:8]} does not restore: {r.brief()}"
            diff = compare(expected, target)
            return f"snapshot {sid[:8]} restores with exit 0 but differs: {diff}" if diff else None
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def check_problem(self, repo, read_data=False, what="check"):
        r = self.cairn(["check"] + (["--read-data"] if read_data else []), repo)
        if r.ok:
            return None
        errors = [line for line in r.err.splitlines() if line.startswith("error")]
        return f"{what}{' --read-data' if read_data else ''} fails: exit {r.rc}: {' | '.join(errors[:3]) or r.brief()}"

    def take(self, repo, source, history, name="app"):
        """A snapshot that must complete; remembers what the source held."""
        state = source.state()
        r = self.cairn(["--json", "snapshot", "--source", name, source.root], repo)
        if r.ok:
            history[r.json()["id"]] = state
            return r.json()["id"], r
        return None, r

    def part(self, key, title):
        p = Part(key, title)
        self.parts.append(p)
        print(f"== {key} {title}", flush=True)
        return p

    def done(self, part):
        part.seconds = time.monotonic() - part.started
        print(f"   {part.trials} trials, {part.trials - part.passed} failed, {part.seconds:.0f} s"
              + (f"  {dict(part.counts)}" if part.counts else ""), flush=True)

    # -- part 1: kill -9 ---------------------------------------------------------------------

    def moments(self, duration, triggers):
        """Timed moments spread over a measured run, and the triggers, interleaved."""
        n_timed = (4 if self.quick else 22) - len(triggers)
        fractions = [0.0] + [0.02 + 0.9 * i / max(1, n_timed - 2) for i in range(n_timed - 1)]
        timed = [Moment(f"at {f * duration * 1000:.0f} ms ({f:.0%} of {duration:.2f} s)", f * duration) for f in fractions]
        out = []
        for i, m in enumerate(timed):
            out.append(m)
            if i % 4 == 1 and triggers:
                out.append(triggers.pop(0))
        return out + triggers

    def kill_series(self, part, duration, triggers, trial):
        """Runs `trial(moment)` until 20 kills (5 with --quick) caught the command mid-run.
        A moment that came after the command had finished counts as such, not as a kill."""
        want = 5 if self.quick else 20
        queue, kills, late = self.moments(duration, list(triggers)), 0, 0
        while queue:
            moment = queue.pop(0)
            if trial(moment):
                kills += 1
            else:
                late += 1
            if not queue and kills < want and late < 3 * want:
                f = self.rng.uniform(0.05, 0.6)
                queue.append(Moment(f"extra, at {f * duration * 1000:.0f} ms", f * duration))
        part.counts["killed mid-run"] += kills
        part.counts["finished before the kill"] += late
        part.record([f"only {kills} of the moments caught the command running"] if kills < want else [],
                    f"at least {want} kills caught the command running")

    def kill_snapshot(self, kind):
        part = self.part("1", f"kill -9 snapshot ({kind})")
        loc = Loc(self, kind, f"snap-{kind}")
        src = Source(self.work / f"src-snap-{kind}", self.rng.random(), files=300, random_mib=5)
        churn = 12 if kind == "local" else 8
        self.must(["init"], loc.url)
        history = {}
        first, r = self.take(loc.url, src, history)
        src.mutate(0, churn)
        sid, r = self.take(loc.url, src, history)
        if not first or not sid:
            raise RuntimeError(f"snapshot failed: {r.brief()}")
        duration, rounds = r.secs, [0]

        def trial(moment):
            rounds[0] += 1
            src.mutate(rounds[0], churn)
            writer = DbWriter(src) if kind == "local" and rounds[0] % 2 else None
            lo, state, watch = src.rows, src.state(), loc.watch()
            before = list(history)
            if writer:
                writer.start()
            k = self.kill(["--quiet", "snapshot", "--source", "app", src.root], loc.url, moment, watch)
            if writer:
                writer.stop()
                state["db/app.db"] = ("db", lo, src.rows)
            problems = [] if k.killed or k.rc == 0 else [f"the run failed by itself: exit {k.rc}: {k.err[-300:]}"]
            ids = self.snapshot_ids(loc.url, problems)
            samples = {before[0], before[-1], self.rng.choice(before)}
            if ids is not None:
                problems += [f"completed snapshot {s[:8]} is gone" for s in history if s not in ids]
                new = [s for s in ids if s not in history]
                if len(new) > 1:
                    problems.append(f"{len(new)} new snapshots from one run")
                if new:
                    history[new[0]] = state
                    samples.add(new[0])
                    part.counts["committed before the kill"] += k.killed
                elif not k.killed:
                    problems.append("the run exited 0 but no new snapshot is listed")
            problems += filter(None, [self.check_problem(loc.url)])
            problems += filter(None, (self.restore_problem(loc.url, s, history[s]) for s in samples))
            again, r = self.take(loc.url, src, history)
            if not again:
                problems.append(f"the next snapshot fails: {r.brief()}")
            part.record(problems, f"kill {moment.label} ({'killed' if k.killed else 'had finished'} after {k.secs:.2f} s)")
            return k.killed

        triggers = [Moment("at the first new pack", seen=added_in("packs")),
                    Moment("at the second new pack", seen=added_in("packs", 2)),
                    Moment("at the first new index file", seen=added_in("index")),
                    Moment("at the manifest", seen=added_in("snapshots"))]
        self.kill_series(part, duration, triggers, trial)
        problems = list(filter(None, [self.check_problem(loc.url, read_data=True)]))
        problems += filter(None, (self.restore_problem(loc.url, s, st) for s, st in history.items()))
        part.record(problems, f"after the kills: check --read-data and a restore of all {len(history)} snapshots")
        loc.remove()
        shutil.rmtree(src.root)
        self.done(part)

    def kill_prune(self, kind):
        part = self.part("1", f"kill -9 prune ({kind})")
        template = Loc(self, kind, f"prune-template-{kind}")
        src = Source(self.work / f"src-prune-{kind}", self.rng.random(), files=200, random_mib=6)
        self.must(["init"], template.url)
        history = {}
        for v in range(6):
            src.mutate(v, 6)
            self.take(template.url, src, history)
        ids = list(history)
        if len(ids) != 6:
            raise RuntimeError("the prune template's snapshots failed")
        self.must(["forget", "--keep-last", "2"], template.url)
        kept = {s: history[s] for s in ids[-2:]}
        n = [0]

        def verify(loc, problems, label):
            listed = self.snapshot_ids(loc.url, problems)
            if listed is not None and sorted(listed) != sorted(kept):
                problems.append(f"{label}: snapshots {sorted(s[:8] for s in listed)}, kept were {sorted(s[:8] for s in kept)}")
            problems += filter(None, (self.restore_problem(loc.url, s, st) for s, st in kept.items()))

        probe = template.copy(f"prune-probe-{kind}")
        r = self.must(["--json", "prune"], probe.url)
        duration = r.secs
        plan = r.json_lines()[0].get("plan", {})
        part.notes.append(f"the prune under test: {r.secs:.2f} s, deletes {len(plan.get('delete', []))} packs, "
                          f"repacks {len(plan.get('repack', []))}, {len(plan.get('unreferenced', []))} unreferenced")
        probe.remove()

        def trial(moment):
            n[0] += 1
            loc = template.copy(f"prune-{kind}-{n[0]}")
            k = self.kill(["--quiet", "prune"], loc.url, moment, loc.watch())
            problems = [] if k.killed or k.rc == 0 else [f"the prune failed by itself: exit {k.rc}: {k.err[-300:]}"]
            problems += filter(None, [self.check_problem(loc.url)])
            verify(loc, problems, "after the kill")
            r = self.cairn(["--quiet", "prune"], loc.url)
            if not r.ok:
                problems.append(f"the next prune fails: {r.brief()}")
            problems += filter(None, [self.check_problem(loc.url, read_data=True, what="after the next prune, check")])
            verify(loc, problems, "after the next prune")
            part.record(problems, f"kill {moment.label} ({'killed' if k.killed else 'had finished'} after {k.secs:.2f} s)")
            loc.remove()
            return k.killed

        triggers = [Moment("at the first new pack", seen=added_in("packs")),
                    Moment("at the first new index file", seen=added_in("index")),
                    Moment("at the first deletion", seen=removed_any),
                    Moment("at the second new index file", seen=added_in("index", 2))]
        self.kill_series(part, duration, triggers, trial)
        template.remove()
        shutil.rmtree(src.root)
        self.done(part)

    def kill_sync(self, kind):
        part = self.part("1", f"kill -9 sync (local -> {kind})")
        source = Loc(self, "local", f"sync-source-{kind}")
        src = Source(self.work / f"src-sync-{kind}", self.rng.random(), files=200, random_mib=4)
        self.must(["init"], source.url)
        history = {}
        for v in range(2):
            src.mutate(v, 4)
            self.take(source.url, src, history)
        template = Loc(self, kind, f"sync-template-{kind}")
        self.must(["--quiet", "sync", "--to", template.url], source.url)
        old = list(history)
        for v in range(2, 5):
            src.mutate(v, 8)
            self.take(source.url, src, history)
        if len(history) != 5:
            raise RuntimeError("the sync source's snapshots failed")
        probe = template.copy(f"sync-probe-{kind}")
        duration = self.must(["--quiet", "sync", "--to", probe.url], source.url).secs
        probe.remove()
        n = [0]

        def trial(moment):
            n[0] += 1
            dest = template.copy(f"sync-{kind}-{n[0]}")
            k = self.kill(["--quiet", "sync", "--to", dest.url], source.url, moment, dest.watch())
            problems = [] if k.killed or k.rc == 0 else [f"the sync failed by itself: exit {k.rc}: {k.err[-300:]}"]
            listed = self.snapshot_ids(dest.url, problems) or []
            problems += [f"snapshot {s[:8]} that was in the destination is gone" for s in old if s not in listed]
            problems += [f"unknown snapshot {s[:8]} in the destination" for s in listed if s not in history]
            problems += filter(None, [self.check_problem(dest.url, what="destination check")])
            restored = [s for s in listed if s in history and s not in old] + [self.rng.choice(old)]
            problems += filter(None, (self.restore_problem(dest.url, s, history[s]) for s in restored))
            r = self.cairn(["--quiet", "sync", "--to", dest.url], source.url)
            if not r.ok:
                problems.append(f"the next sync fails: {r.brief()}")
            listed = self.snapshot_ids(dest.url, problems) or []
            problems += [f"after the next sync, snapshot {s[:8]} is missing" for s in history if s not in listed]
            problems += filter(None, [self.check_problem(dest.url, read_data=True, what="after the next sync, destination check")])
            problems += filter(None, (self.restore_problem(dest.url, s, history[s]) for s in history if s not in restored))
            part.record(problems, f"kill {moment.label} ({'killed' if k.killed else 'had finished'} after {k.secs:.2f} s)")
            dest.remove()
            return k.killed

        triggers = [Moment("at the first pack in the destination", seen=added_in("packs")),
                    Moment("at the first index file in the destination", seen=added_in("index")),
                    Moment("at the first manifest in the destination", seen=added_in("snapshots")),
                    Moment("at the third pack in the destination", seen=added_in("packs", 3))]
        self.kill_series(part, duration, triggers, trial)
        problems = list(filter(None, [self.check_problem(source.url, read_data=True, what="source check")]))
        part.record(problems, "after the kills: the source repository checks clean with --read-data")
        for loc in (template, source):
            loc.remove()
        shutil.rmtree(src.root)
        self.done(part)

    def part1(self):
        if not self.moto:
            self.moto = Moto(self.work)
        for kind in ("local", "s3"):
            self.kill_snapshot(kind)
            self.kill_prune(kind)
            self.kill_sync(kind)

    # -- part 2: parallel snapshots racing a prune loop ----------------------------------------

    def part2(self):
        part = self.part("2", "three parallel snapshots racing forget --keep-last 2 --prune")
        rounds = 3 if self.quick else 20  # per source
        repo = Loc(self, "local", "race")
        self.must(["init"], repo.url)
        sources = [Source(self.work / f"src-race-{i}", self.rng.random(), files=150, random_mib=3, db=i == 0)
                   for i in range(3)]
        committed, forgotten, trouble, lock = {}, set(), [], threading.Lock()
        halt, prunes = threading.Event(), [0]

        def snapper(i, src):
            pause = random.Random(i)
            for rnd in range(rounds):
                # A pause between rounds, as between clients' schedules: with three clients taking
                # shared locks back to back, the prune's exclusive lock would rarely get in.
                time.sleep(pause.uniform(0, 0.5))
                src.mutate(rnd, 4)
                writer = DbWriter(src) if src.db else None
                lo, state = src.rows, src.state()
                if writer:
                    writer.start()
                r = self.cairn(["--json", "snapshot", "--source", f"race-{i}", src.root], repo.url)
                if writer:
                    writer.stop()
                    state["db/app.db"] = ("db", lo, src.rows)
                if not r.ok:
                    with lock:
                        trouble.append(f"snapshot of source race-{i}, round {rnd}: {r.brief()}")
                    continue
                sid = r.json()["id"]
                with lock:
                    committed[sid] = (i, rnd, state)
                # At once, while prunes go on: the newest snapshot of its source, so no policy
                # may remove it before this thread takes the next one.
                p = self.restore_problem(repo.url, sid, state)
                with lock:
                    part.record([p] if p else [], f"snapshot {sid[:8]} of race-{i}, round {rnd}, restored during the race")

        def pruner():
            while not halt.is_set():
                r = self.cairn(["--json", "forget", "--keep-last", "2", "--prune"], repo.url)
                prunes[0] += 1
                part.counts["longest forget --prune (s)"] = max(part.counts["longest forget --prune (s)"], round(r.secs, 1))
                try:
                    docs = r.json_lines()
                except ValueError:
                    docs = []
                with lock:
                    if not r.ok:
                        trouble.append(f"forget --prune #{prunes[0]}: {r.brief()}")
                    for doc in docs:
                        if isinstance(doc.get("snapshots"), list):
                            forgotten.update(s["id"] for s in doc["snapshots"] if not s.get("keep", True))

        threads = [threading.Thread(target=snapper, args=(i, s)) for i, s in enumerate(sources)]
        loop = threading.Thread(target=pruner)
        loop.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        halt.set()
        loop.join()
        part.counts["forget --prune runs"] = prunes[0]
        for line in trouble:
            part.record([line], "a command in the race failed")
        problems = []
        listed = self.snapshot_ids(repo.url, problems) or []
        newest = {}
        for sid, (i, rnd, state) in committed.items():
            if rnd >= newest.get(i, (-1, None))[0]:
                newest[i] = (rnd, sid)
            if sid in listed:
                p = self.restore_problem(repo.url, sid, state)
                part.record([p] if p else [], f"snapshot {sid[:8]} of race-{i}, round {rnd}, restored afterwards")
                part.counts["committed, kept, restored exactly afterwards" if not p else "committed, kept, restore wrong"] += 1
            elif sid in forgotten:
                part.counts["committed, later forgotten by the policy"] += 1
            else:
                part.record([f"committed snapshot {sid[:8]} of race-{i}, round {rnd} is gone, and no forget removed it"], "lost")
        for i, (rnd, sid) in newest.items():
            if sid not in listed:
                problems.append(f"the newest snapshot of race-{i} ({sid[:8]}) is not listed")
        problems += filter(None, [self.check_problem(repo.url, read_data=True)])
        part.record(problems, "afterwards: check --read-data, newest snapshot of each source present")
        repo.remove()
        for s in sources:
            shutil.rmtree(s.root)
        self.done(part)

    # -- part 3: corruption -------------------------------------------------------------------

    def corruption_fixture(self, encrypted):
        name = "corrupt-" + ("encrypted" if encrypted else "plain")
        repo = Loc(self, "local", name + "-pristine")
        src = Source(self.work / f"src-{name}", self.rng.random(), files=120, random_mib=2)
        self.must(["init"] + ([] if encrypted else ["--encryption", "none"]), repo.url)
        states = {}
        self.take(repo.url, src, states)
        src.mutate(1, 1)
        self.take(repo.url, src, states)
        self.must(["check"], repo.url)  # an audit record of another kind
        if len(states) != 2:
            raise RuntimeError("the corruption fixture's snapshots failed")
        shutil.rmtree(src.root)
        files = collections.defaultdict(list)
        for rel in sorted(local_files(repo.path)):
            kind = {"packs": "pack", "index": "index", "snapshots": "manifest", "keys": "key",
                    "audit": "audit record", "config": "config"}[rel.split("/")[0]]
            files[kind].append(rel)
        digests = {rel: sha256_file(repo.path / rel) for kinds in files.values() for rel in kinds}
        return repo, states, files, digests

    def assess(self, repo, states, rel, how):
        """Classifies one damaged repository: detected, harmless, silent or a crash."""
        name = rel.split("/")[-1]
        named = lambda run: name in (run.out + run.err) or (len(name) == 64 and name[:8] in (run.out + run.err))
        chk = self.cairn(["check", "--read-data"], repo)
        runs, restores = [chk], {}
        for sid, state in states.items():
            target = self.scratch()
            r = self.cairn(["--quiet", "restore", sid, "--target", target], repo)
            runs.append(r)
            restores[sid] = (r, compare(state, target) if r.ok else None)
            shutil.rmtree(target, ignore_errors=True)
        status = self.cairn(["status"], repo) if rel.startswith("audit/") else None
        crashes = [r for r in runs + ([status] if status else []) if r.crashed]
        if crashes:
            return "CRASH", f"`{' '.join(crashes[0].argv[5:7])}` crashed: {crashes[0].brief()}"
        wrong = [f"{sid[:8]}: {diff}" for sid, (r, diff) in restores.items() if r.ok and diff]
        if wrong:
            return "SILENT DAMAGE", f"restore exits 0 with wrong bytes: {wrong[0]} (check: exit {chk.rc})"
        failed = [sid for sid, (r, _) in restores.items() if not r.ok]
        if chk.ok and failed:
            if how == "deleted" and rel.startswith("snapshots/"):
                return "undetectable by design", "a deleted manifest: check is clean, the snapshot is simply gone"
            return "SILENT DAMAGE", f"check exits 0 but snapshot {failed[0][:8]} does not restore: {restores[failed[0]][0].brief()}"
        if not chk.ok:
            if named(chk):
                return "detected: check names the file", ""
            if any(named(r) for r in runs if not r.ok):
                return "detected: a command refuses, naming the file", chk.brief()
            if how == "deleted" and "error" in chk.err:
                return "detected: check fails with an error", chk.brief()  # a deleted name is unknown
            return "detected: check fails without naming the file", chk.brief()
        if status is not None and not status.ok and named(status):
            return "detected: status names it (check does not read audit records)", ""
        return "undetected, harmless", "check clean and every snapshot restores exactly"

    def corrupt(self, encrypted):
        label = "encrypted" if encrypted else "plain"
        part = self.part("3", f"single-byte corruption and deleted files ({label})")
        pristine, states, files, digests = self.corruption_fixture(encrypted)
        part.notes.append("files: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(files.items())))
        harmless = collections.Counter()
        trials = 25 if self.quick else 200

        def one(rel, how, offset=None):
            trial = self.work / "repos" / f"corrupt-trial-{self.counter}"
            self.counter += 1
            subprocess.run(["cp", "-al", str(pristine.path), str(trial)], check=True)
            path = trial / rel
            data = bytearray(path.read_bytes())
            path.unlink()  # a hard link to the pristine file: replace it, never write through it
            if how == "flipped":
                data[offset] ^= self.rng.randint(1, 255)
                path.write_bytes(bytes(data))
            verdict, detail = self.assess(str(trial), states, rel, how)
            shutil.rmtree(trial, ignore_errors=True)
            return verdict, detail

        for t in range(trials):
            kind = self.rng.choice(sorted(files))
            rel = self.rng.choice(files[kind])
            size = (pristine.path / rel).stat().st_size
            region = self.rng.choice(["start", "end", "anywhere", "anywhere"])
            offset = {"start": self.rng.randrange(min(size, 32)),
                      "end": size - 1 - self.rng.randrange(min(size, 128)),
                      "anywhere": self.rng.randrange(size)}[region]
            verdict, detail = one(rel, "flipped", offset)
            part.counts[f"flipped {kind}: {verdict}"] += 1
            what = f"flip #{t}: {kind} {rel[:20]}.. byte {offset} of {size} ({region})"
            if verdict in ("SILENT DAMAGE", "CRASH"):
                part.record([f"{verdict}: {detail}"], what)
            else:
                part.record([], what)
                if verdict.startswith("undetected") or "without naming" in verdict:
                    harmless[f"{verdict}: {kind}"] += 1
                    part.notes.append(f"{what}: {verdict}; {detail}")
        for kind in sorted(files):
            choices = [files[kind][0]] if kind != "pack" else [
                max(files[kind], key=lambda r: (pristine.path / r).stat().st_size),
                min(files[kind], key=lambda r: (pristine.path / r).stat().st_size)]
            for rel in choices:
                verdict, detail = one(rel, "deleted")
                part.counts[f"deleted {kind}: {verdict}"] += 1
                what = f"deleted {kind} {rel[:20]}.."
                if verdict in ("SILENT DAMAGE", "CRASH"):
                    part.record([f"{verdict}: {detail}"], what)
                else:
                    part.record([], what)
                    if not verdict.startswith("detected"):
                        part.notes.append(f"{what}: {verdict}; {detail}")
        changed = [rel for rel, d in digests.items() if sha256_file(pristine.path / rel) != d]
        part.record([f"the pristine copy changed: {changed[:3]}"] if changed else [], "the pristine repository is untouched")
        pristine.remove()
        self.done(part)

    def part3(self):
        self.corrupt(encrypted=False)
        self.corrupt(encrypted=True)

    # -- part 4: a full disk ------------------------------------------------------------------

    def part4(self):
        part = self.part("4", "full disk (64 MiB ext4 repository, 16 MiB tmpfs target)")
        image, mnt, full_target = self.work / "disk.img", self.work / "disk", self.work / "full-target"
        mnt.mkdir()
        full_target.mkdir()
        subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        mounted = [mnt]
        try:
            self.full_disk(part, mnt, full_target, mounted)
        finally:
            for m in reversed(mounted):
                if subprocess.run(["umount", str(m)]).returncode:
                    subprocess.run(["umount", "-l", str(m)])
            image.unlink(missing_ok=True)
        self.done(part)

    def full_disk(self, part, mnt, full_target, mounted):
        repo = str(mnt / "repo")
        small = Source(self.work / "src-full-small", self.rng.random(), files=100, random_mib=3)
        big = self.work / "src-full-big"
        big.mkdir()
        for i in range(5):
            (big / f"big-{i}.bin").write_bytes(self.rng.randbytes(8 * MIB))
        big_state = scan(big)
        self.must(["init"], repo)
        history = {}
        first, _ = self.take(repo, small, history)
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, max(0, free - 24 * MIB))
        part.notes.append(f"repository file system: {free // MIB} MiB free after the first snapshot, "
                          f"24 MiB after the filler; the second snapshot needs 40 MiB (a 16 MiB pack fits)")
        space = lambda r: re.search(r"space|ENOSPC|disk.*full", r.err, re.I)

        r = self.cairn(["snapshot", big], repo)
        problems = []
        if r.crashed or r.rc != 1:
            problems.append(f"a snapshot larger than the free space: {r.brief()} (want exit 1)")
        elif not space(r):
            problems.append(f"the error does not say the disk is full: {r.brief()}")
        part.record(problems, "snapshot onto a full disk fails with a clear error, exit 1")
        part.notes.append(f"snapshot onto the full disk: {r.brief()}")

        problems = []
        listed = self.snapshot_ids(repo, problems)
        if listed is not None and listed != [first]:
            problems.append(f"snapshots after the failure: {[s[:8] for s in listed]}, want only {first[:8]}")
        problems += filter(None, [self.check_problem(repo, what="check on the still full disk")])
        problems += filter(None, [self.restore_problem(repo, first, history[first])])
        part.record(problems, "after it, on the still full disk: the repository opens, checks clean, the first snapshot restores")

        # The last free blocks taken too: what still works on a disk with nothing free?
        with open(mnt / "filler-2", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(bytes(4096))
            except OSError:
                pass
        target = self.scratch("full")
        for args in (["snapshots"], ["check"], ["restore", first, "--target", target]):
            r = self.cairn(args, repo)
            crashed = [f"crashed: {r.brief()}"] if r.crashed or (not r.ok and not r.err.strip()) else []
            part.record(crashed, f"`{args[0]}` with 0 bytes free on the repository disk (exit {r.rc})")
            if not r.ok:
                part.notes.append(f"`{args[0]}` with 0 bytes free on the repository disk: {r.brief()}")
        if r.ok and compare(history[first], target):
            part.record(["restore exits 0 but differs"], "restore with 0 bytes free")
        shutil.rmtree(target, ignore_errors=True)
        (mnt / "filler-2").unlink()

        r = self.cairn(["prune"], repo)
        part.notes.append(f"prune on the full disk: {r.brief()}")
        problems = [] if r.ok or (r.rc == 1 and r.err.strip() and not r.crashed) else [f"prune on the full disk: {r.brief()}"]
        problems += filter(None, [self.check_problem(repo, what="check after that prune")])
        problems += filter(None, [self.restore_problem(repo, first, history[first])])
        part.record(problems, f"prune on the full disk succeeds or fails clearly (it exited {r.rc}), the repository stays whole")

        filler.unlink()
        problems = []
        r = self.cairn(["prune"], repo)
        if not r.ok:
            problems.append(f"prune after freeing space: {r.brief()}")
        r = self.cairn(["--json", "snapshot", big], repo)
        if not r.ok:
            problems.append(f"the snapshot after freeing space fails: {r.brief()}")
            big_id = None
        else:
            big_id = r.json()["id"]
            problems += filter(None, [self.restore_problem(repo, big_id, big_state)])
        problems += filter(None, [self.check_problem(repo, read_data=True)])
        problems += filter(None, [self.restore_problem(repo, first, history[first])])
        part.record(problems, "once space is freed (filler removed, prune): the snapshot succeeds and everything restores")

        problems = []
        if big_id:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(full_target)], check=True)
            mounted.append(full_target)
            r = self.cairn(["restore", big_id, "--target", full_target / "r"], repo)
            if r.crashed or r.rc != 1:
                problems.append(f"restore of 40 MiB into a 16 MiB target: {r.brief()} (want exit 1)")
            elif not space(r):
                problems.append(f"the error does not say the target is full: {r.brief()}")
        else:
            problems.append("no snapshot to restore")
        part.record(problems, "restore into a full target fails with a clear error, exit 1")
        part.notes.append(f"restore into the full target: {r.brief()}")
        shutil.rmtree(small.root)
        shutil.rmtree(big)

    # -- part 5: crafted cases ----------------------------------------------------------------

    def part5(self):
        part = self.part("5", "crafted cases from issue 20")
        for case in [c for c in (self.symlink_in_target, self.swapped_directory, self.rewritten_file, self.truncated_file,
                     self.closed_stdout, self.index_moved_away, self.deep_tree, self.protected_forget,
                     self.password_precedence, self.run_without_password, self.config_relative_paths,
                     self.drill_scratch_leftover, self.no_plaintext) if self.case in c.__name__]:
            started = time.monotonic()
            try:
                case(part)
            except Exception as e:  # a broken case must not hide the others
                part.record([f"the case itself failed: {type(e).__name__}: {e}"], case.__name__)
            print(f"   {case.__name__}: {time.monotonic() - started:.1f} s", flush=True)
        self.done(part)

    def symlink_in_target(self, part):
        """issue 20.2: restore must never write through a symlink already in the target."""
        src, outside = self.work / "src-symlink", self.work / "outside"
        (src / "x").mkdir(parents=True)
        (src / "x/evil").write_bytes(b"written through a planted symlink\n")
        (src / "keep.txt").write_bytes(b"keep\n")
        outside.mkdir()
        repo = Loc(self, "local", "symlink")
        self.must(["init"], repo.url)
        sid = self.must(["--json", "snapshot", src], repo.url).json()["id"]
        for mode, extra, prefill in (("--include x/evil", ["--include", "x/evil"], False),
                                     ("full restore", [], False),
                                     ("--skip-identical", ["--skip-identical"], True),
                                     ("--include x/evil --skip-identical", ["--include", "x/evil", "--skip-identical"], False)):
            target = self.scratch("symlink")
            target.mkdir()
            if prefill:
                (target / "keep.txt").write_bytes(b"keep\n")
            os.symlink(outside, target / "x")
            r = self.cairn(["restore", sid, "--target", target, *extra], repo.url)
            escaped = sorted(p.name for p in outside.iterdir())
            problems = [f"restore ({r.brief()}) created {escaped} in {outside} through target/x -> {outside}"] if escaped else []
            if r.crashed:
                problems.append(f"restore crashed: {r.brief()}")
            part.record(problems, f"symlink planted in the restore target, {mode}")
            for p in outside.iterdir():
                p.unlink()
            shutil.rmtree(target)
        repo.remove()
        shutil.rmtree(src)
        shutil.rmtree(outside)

    def swapped_directory(self, part):
        """issue 20.4: a directory swapped for a symlink mid-walk must never be followed."""
        src, outside = self.work / "src-swap", self.work / "swap-outside"
        for d in range(40):
            (src / f"d{d:02}").mkdir(parents=True)
            for f in range(25):
                (src / f"d{d:02}/f{f:02}").write_bytes(self.rng.randbytes(16384))
        outside.mkdir()
        for f in range(25):
            (outside / f"OUTSIDE-SECRET-{f:02}").write_bytes(b"must never be stored\n")
        repo = Loc(self, "local", "swap")
        self.must(["init"], repo.url)
        halt = threading.Event()
        rng = random.Random(self.rng.random())

        def swapper():
            while not halt.is_set():
                d = src / f"d{rng.randrange(40):02}"
                os.rename(d, str(d) + ".away")
                try:
                    os.symlink(outside, d)
                    time.sleep(rng.choice([0, 0, 0.0002, 0.001]))
                finally:
                    if d.is_symlink():
                        os.unlink(d)
                    os.rename(str(d) + ".away", d)

        hits, runs = 0, 10 if self.quick else 50
        for i in range(runs):
            t = threading.Thread(target=swapper)
            t.start()
            # A source name of its own: no parent, so every file is read and the walk takes a while.
            r = self.cairn(["--json", "snapshot", "--source", f"swap-{i}", src], repo.url)
            halt.set()
            t.join()
            halt.clear()
            problems = []
            if r.crashed or r.rc not in (0, 3):
                problems.append(f"snapshot: {r.brief()}")
            else:
                sid = r.json()["id"]
                ls = self.cairn(["--json", "ls", sid], repo.url)
                stolen = sorted({e["path"] for e in ls.json_lines() if "OUTSIDE-SECRET" in e["path"]})
                if stolen:
                    hits += 1
                    problems.append(f"outside files stored in snapshot {sid[:8]} (exit {r.rc}): {stolen[0]} and {len(stolen) - 1} more")
                part.counts[f"swap snapshots exit {r.rc}"] += 1
            part.record(problems, f"directory swapped for a symlink during snapshot #{i}")
        repo.remove()
        shutil.rmtree(src)
        shutil.rmtree(outside)

    def big_file_case(self, name, mib):
        src = self.work / f"src-{name}"
        src.mkdir()
        (src / "small.txt").write_bytes(b"small\n")
        repo = Loc(self, "local", name)
        self.must(["init"], repo.url)
        seeds = (self.rng.random(), self.rng.random())
        versions = [random.Random(s).randbytes(mib * MIB) for s in seeds]
        return src, repo, versions

    def stored_content(self, repo, sid):
        target = self.scratch("big")
        r = self.cairn(["--quiet", "restore", sid, "--target", target, "--include", "big.bin"], repo.url)
        data = (target / "big.bin").read_bytes() if r.ok and (target / "big.bin").exists() else None
        shutil.rmtree(target, ignore_errors=True)
        return r, data

    def reported(self, r, name="big.bin"):
        try:
            errors = json.dumps(r.json().get("errors", [])) if r.out.strip() else ""
        except ValueError:
            errors = ""
        return r.rc == 3 and (name in r.err or name in errors)

    def rewritten_file(self, part):
        """issue 20.5: a file rewritten while it is read is stored whole (old or new) or reported."""
        mib = 32 if self.quick else 64
        src, repo, (a, b) = self.big_file_case("rewrite", mib)
        path = src / "big.bin"
        for i in range(2 if self.quick else 4):
            path.write_bytes(a)
            halt = threading.Event()

            def writer():
                version = 1
                with open(path, "r+b") as f:
                    while not halt.is_set():
                        data = (a, b)[version]
                        for off in range(0, len(data), MIB):
                            if halt.is_set():
                                break
                            f.seek(off)
                            f.write(data[off:off + MIB])
                            f.flush()
                        version ^= 1

            t = threading.Thread(target=writer)
            t.start()
            r = self.cairn(["--json", "snapshot", src], repo.url)
            halt.set()
            t.join()
            problems = []
            if r.crashed or r.rc not in (0, 3):
                problems.append(f"snapshot: {r.brief()}")
            else:
                rr, data = self.stored_content(repo, r.json()["id"])
                if data is None:
                    problems.append(f"the stored file does not restore: {rr.brief()}")
                elif data not in (a, b) and not self.reported(r):
                    blocks = [data[o:o + MIB] for o in range(0, len(data), MIB)]
                    olds = sum(blk == a[o * MIB:(o + 1) * MIB] for o, blk in enumerate(blocks))
                    news = sum(blk == b[o * MIB:(o + 1) * MIB] for o, blk in enumerate(blocks))
                    problems.append(f"stored torn and not reported (exit {r.rc}): {olds} MiB of one version, "
                                    f"{news} MiB of the other, {len(blocks) - olds - news} MiB of neither")
                part.counts[f"rewritten: exit {r.rc}, " + ("stored whole" if data in (a, b) else "stored torn")] += 1
            part.record(problems, f"a {mib} MiB file rewritten in place during snapshot #{i}")
        repo.remove()
        shutil.rmtree(src)

    def truncated_file(self, part):
        """issue 20.5: a file truncated while it is read is stored as it was, as empty, or reported."""
        mib = 32 if self.quick else 64
        src, repo, (a, _) = self.big_file_case("truncate", mib)
        path = src / "big.bin"
        path.write_bytes(a)
        self.must(["snapshot", src], repo.url)
        path.unlink()
        path.write_bytes(a)
        duration = self.must(["snapshot", src], repo.url).secs  # a re-read of known content
        for i, fraction in enumerate([0.4] if self.quick else [0.2, 0.4, 0.6]):
            path.unlink()
            path.write_bytes(a)  # a new inode: the snapshot must read it again
            proc = subprocess.Popen(self.argv(["--json", "snapshot", src], repo.url), env=self.env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            time.sleep(duration * fraction)
            os.truncate(path, 0)
            out, err = proc.communicate()
            r = Run([], proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), 0)
            problems = []
            if r.crashed or r.rc not in (0, 3):
                problems.append(f"snapshot: {r.brief()}")
            else:
                rr, data = self.stored_content(repo, r.json()["id"])
                if data is None:
                    problems.append(f"the stored file does not restore: {rr.brief()}")
                elif data not in (a, b"") and not self.reported(r):
                    problems.append(f"stored as a {len(data) / MIB:.1f} MiB prefix of the {mib} MiB file, "
                                    f"not reported (exit {r.rc})")
                part.counts[f"truncated: exit {r.rc}, stored {len(data or b'') / MIB:.0f} MiB"] += 1
            part.record(problems, f"a {mib} MiB file truncated to 0 at {fraction:.0%} of the snapshot")
        repo.remove()
        shutil.rmtree(src)

    def closed_stdout(self, part):
        """issue 20.6: `cairn ls latest | head -1` ends quietly with exit 0."""
        src = self.work / "src-many"
        src.mkdir()
        for i in range(3000):
            (src / f"a-rather-long-file-name-so-that-the-listing-outgrows-a-pipe-{i:05}").touch()
        repo = Loc(self, "local", "many")
        self.must(["init"], repo.url)
        self.must(["snapshot", src], repo.url)
        for args in (["ls", "latest"], ["ls", "-l", "latest"], ["--json", "ls", "latest"]):
            argv = " ".join(f"'{a}'" for a in self.argv(args, repo.url))
            p = subprocess.run(["bash", "-c", f"{argv} 2>{self.work}/ls.err | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}"],
                               env=self.env(), capture_output=True, text=True)
            rc, err = p.stdout.strip(), (self.work / "ls.err").read_text().strip()
            problems = [] if rc == "0" and not err else [f"exit {rc}, stderr {err[-200:]!r}"]
            part.record(problems, f"`cairn {' '.join(args)} | head -1`")
        repo.remove()
        shutil.rmtree(src)

    def index_moved_away(self, part):
        """issue 20.1: prune, forget --prune and sync --prune delete nothing when an index file is gone."""
        for command in ("prune", "forget --prune", "sync --prune"):
            src = self.work / "src-index"
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir()
            for i in range(10):
                (src / f"a{i}").write_bytes(self.rng.randbytes(300_000))
            repo = Loc(self, "local", "index-gone")
            self.must(["init"], repo.url)
            first = self.must(["--json", "snapshot", src], repo.url).json()["id"]
            first_index = set(os.listdir(repo.path / "index"))
            for i in range(10):
                (src / f"b{i}").write_bytes(self.rng.randbytes(300_000))
            state = scan(src)
            second = self.must(["--json", "snapshot", src], repo.url).json()["id"]
            self.must(["forget", first], repo.url)
            victim, target_repo = repo, repo
            if command == "sync --prune":
                target_repo = Loc(self, "local", "index-gone-dest")
                self.must(["sync", "--to", target_repo.url], repo.url)
                (src / "c").write_bytes(b"one more snapshot, so that sync has work\n")
                state = scan(src)
                second = self.must(["--json", "snapshot", src], repo.url).json()["id"]
                victim = target_repo  # its one index file names the packs of the a* chunks
                first_index = set(os.listdir(victim.path / "index"))
            moved = self.work / "moved-index"
            shutil.rmtree(moved, ignore_errors=True)
            moved.mkdir()
            names = sorted(first_index)
            for n in names:
                os.rename(victim.path / "index" / n, moved / n)
            packs = {p for p in local_files(victim.path) if p.startswith("packs/")}
            if command == "prune":
                r = self.cairn(["prune"], victim.url)
            elif command == "forget --prune":
                r = self.cairn(["forget", "--keep-last", "5", "--prune"], victim.url)
            else:
                r = self.cairn(["sync", "--to", victim.url, "--prune", "--keep-last", "5"], repo.url)
            gone = packs - {p for p in local_files(victim.path) if p.startswith("packs/")}
            problems = [f"{len(gone)} of {len(packs)} packs deleted ({r.brief()})"] if gone else []
            if r.crashed:
                problems.append(f"crashed: {r.brief()}")
            for n in names:
                os.rename(moved / n, victim.path / "index" / n)
            problems += filter(None, [self.check_problem(victim.url, read_data=True, what="with the index file back, check")])
            problems += filter(None, [self.restore_problem(victim.url, second, state)])
            part.record(problems, f"`{command}` with an index file moved away (exit {r.rc})")
            repo.remove()
            if target_repo is not repo:
                target_repo.remove()
            shutil.rmtree(src)

    def deep_tree(self, part):
        """issue 20.3: a tree 30,000 directories deep: no command may overflow its stack."""
        # A walk by path stores the first ~2,030 levels (PATH_MAX) and reports the rest. The
        # drill restores into /tmp/cairn-drill-PID-XXXXXXXX; a source path of the same length
        # lets it restore every stored level and go on to verify them all.
        depth = 5_000 if self.quick else 30_000
        src = Path("/tmp") / f"hostile-deep-{os.getpid()}-".ljust(26, "x")
        subprocess.run(["rm", "-rf", str(src)])
        src.mkdir()
        (src / "d").mkdir()
        (src / "d/leaf.txt").write_bytes(b"at the bottom\n")
        for _ in range(depth - 1):  # built from the bottom up: short paths, O(1) per level
            os.mkdir(src / "n")
            os.rename(src / "d", src / "n/d")
            os.rename(src / "n", src / "d")
        (src / "top.txt").write_bytes(b"top\n")
        repo = Loc(self, "local", "deep")
        self.must(["init"], repo.url)
        r = self.cairn(["--json", "snapshot", src], repo.url, timeout=900)
        problems = [f"snapshot crashed: {r.brief()}"] if r.crashed else []
        stored = r.json()["summary"]["dirs"] if r.rc in (0, 3) else 0
        part.record(problems, f"snapshot of a tree {depth} directories deep (exit {r.rc}, {stored} directories stored)")
        if r.rc in (0, 3):
            for args in (["ls", "latest"], ["check"], ["check", "--read-data"]):
                r = self.cairn(args, repo.url, timeout=900, discard_stdout=True)
                part.record([f"crashed: {r.brief()[-200:]}"] if r.crashed else [], f"`{' '.join(args)}` on it (exit {r.rc})")
            proc = subprocess.Popen(self.argv(["--quiet", "drill", "--scratch", "/tmp"], repo.url), env=self.env(),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            err = proc.communicate(timeout=900)[1].decode(errors="replace")
            r = Run([], proc.returncode, "", err, 0)
            left = sorted(Path("/tmp").glob(f"cairn-drill-{proc.pid}-*"))
            if left:
                part.notes.append(f"the drill (exit {proc.returncode}) left its scratch directory {left[0]} behind")
            subprocess.run(["rm", "-rf", *map(str, left)])
            part.record([f"crashed: {r.brief()[-200:]}"] if r.crashed else [], f"`drill` on it (exit {r.rc})")
            target = self.scratch("deep")
            r = self.cairn(["--quiet", "restore", "latest", "--target", target], repo.url, timeout=900)
            problems = [f"restore crashed: {r.brief()[-200:]}"] if r.crashed else []
            if r.ok:
                fd, level = os.open(target, os.O_RDONLY | os.O_DIRECTORY), 0
                try:
                    while True:
                        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                        os.close(fd)
                        fd, level = nxt, level + 1
                except OSError:
                    pass
                if level + 1 < stored:
                    problems.append(f"restore exits 0 but stops at depth {level} of {stored - 1}")
                if level == depth:
                    try:
                        leaf = os.open("leaf.txt", os.O_RDONLY, dir_fd=fd)  # leaf.txt is in the deepest d
                        if os.read(leaf, 100) != b"at the bottom\n":
                            problems.append("restore exits 0 but the leaf file differs")
                        os.close(leaf)
                    except OSError as e:
                        problems.append(f"restore exits 0 without the leaf file: {e}")
                os.close(fd)
            part.record(problems, f"restore of it (exit {r.rc})")
            subprocess.run(["rm", "-rf", str(target)])
        repo.remove()
        self.background.append(subprocess.Popen(["rm", "-rf", str(src)]))  # slow for 30,000 levels

    def protected_forget(self, part):
        """issue 20.8: `forget ID` of a snapshot tagged protected is refused without --force."""
        src = self.work / "src-protected"
        src.mkdir()
        (src / "f").write_bytes(b"precious\n")
        repo = Loc(self, "local", "protected")
        self.must(["init"], repo.url)
        sid = self.must(["--json", "snapshot", "--tag", "protected", src], repo.url).json()["id"]
        r = self.cairn(["forget", sid], repo.url)
        problems = []
        listed = self.snapshot_ids(repo.url, problems) or []
        if sid not in listed:
            problems.append(f"the protected snapshot was deleted ({r.brief()})")
        part.record(problems, f"`forget ID` of a protected snapshot (exit {r.rc})")
        repo.remove()
        shutil.rmtree(src)

    def password_precedence(self, part):
        """issue 20.7: a flag always beats the environment."""
        repo = Loc(self, "local", "passwords")
        self.must(["init"], repo.url)
        right, wrong = self.work / "right-password", self.work / "wrong-password"
        right.write_text(PASSWORD + "\n")
        wrong.write_text("not the password\n")
        cases = [("CAIRN_PASSWORD (wrong) and --password-file (right)",
                  {"CAIRN_PASSWORD": "not the password"}, ["--password-file", right]),
                 ("CAIRN_PASSWORD_FILE (wrong) and --password-command (right)",
                  {"CAIRN_PASSWORD_FILE": str(wrong)}, ["--password-command", f"cat {right}"]),
                 ("CAIRN_PASSWORD_COMMAND (wrong) and --password-file (right)",
                  {"CAIRN_PASSWORD_COMMAND": f"cat {wrong}"}, ["--password-file", right])]
        for label, env, flags in cases:
            r = self.cairn([*flags, "snapshots"], repo.url, password=None, env=env)
            part.record([] if r.ok else [f"the flag lost: {r.brief()}"], f"password: {label}")
        repo.remove()

    def write_config(self, directory, offsite=False):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(exist_ok=True)
        (directory / "data/f.txt").write_text("config-driven\n")
        text = 'repository = "repo"\n\n[[source]]\nname = "data"\nkind = "tree"\npaths = ["data"]\n'
        if offsite:
            text += '\n[[offsite]]\nname = "off"\nrepository = "offsite"\n'
        (directory / "config.toml").write_text(text)
        return directory / "config.toml"

    def run_without_password(self, part):
        """issue 20.7: a config-driven run never creates a plain repository unless the config says so."""
        config = self.write_config(self.work / "run-nopass")
        r = self.cairn(["run", "--config", config], password=None, cwd=self.work)
        repo_config = config.parent / "repo/config"
        plain = repo_config.exists() and repo_config.read_bytes()[10:11] == b"\0"
        part.record([f"it created a plain repository ({r.brief()})"] if plain else [],
                    f"`cairn run` without a password (exit {r.rc})")
        shutil.rmtree(config.parent)

    def config_relative_paths(self, part):
        """issue 20.10: paths in a config are relative to the config file, [[offsite]] included."""
        config = self.write_config(self.work / "run-relative/conf", offsite=True)
        cwd = self.work / "run-relative/elsewhere"
        cwd.mkdir()
        r = self.cairn(["run", "--config", config], cwd=cwd)
        problems = [] if (config.parent / "offsite/config").exists() else ["no offsite repository beside the config file"]
        if (cwd / "offsite").exists():
            problems.append(f"the offsite repository landed in the current directory {cwd}/offsite")
        part.record(problems, f"relative [[offsite]] repository path (run exit {r.rc})")
        shutil.rmtree(config.parent.parent)

    def drill_scratch_leftover(self, part):
        """issue 20.10: nothing cairn creates outside a repository or a target outlives the command."""
        src = self.work / "src-drill"
        src.mkdir()
        (src / "f").write_text("drill me\n")
        repo = Loc(self, "local", "drill")
        self.must(["init"], repo.url)
        self.must(["snapshot", src], repo.url)
        scratch = self.work / "nonexistent"
        r = self.cairn(["drill", "--scratch", scratch / "dir"], repo.url)
        part.record([f"{scratch} is left behind ({r.brief()})"] if scratch.exists() else [],
                    f"`drill --scratch NONEXISTENT/dir` (exit {r.rc})")
        shutil.rmtree(scratch, ignore_errors=True)
        repo.remove()
        shutil.rmtree(src)

    def no_plaintext(self, part):
        """No plaintext, file name or password in an encrypted repository; no credential anywhere."""
        src = Source(self.work / "src-plaintext", self.rng.random(), files=80, random_mib=1)
        repo = Loc(self, "local", "plaintext")
        self.must(["init"], repo.url)
        self.must(["snapshot", src.root], repo.url)
        self.must(["check"], repo.url)
        needles = [MARKER, PASSWORD.encode(), b"t000.txt", b"readonly.txt", AWS_SECRET.encode()]
        found = []
        for rel in local_files(repo.path):
            data = (repo.path / rel).read_bytes()
            found += [f"{n.decode()!r} in {rel}" for n in needles if n in data]
        part.record(found[:3], "no plaintext, name, password or credential in an encrypted repository")
        repo.remove()
        shutil.rmtree(src.root)

    # -- the report -------------------------------------------------------------------------

    def report(self, total):
        print("\n" + "=" * 100)
        print(f"cairn hostile campaign: {self.binary}")
        print(f"{'part':<74} {'trials':>6} {'passed':>6} {'failed':>6} {'time':>7}")
        for p in self.parts:
            print(f"{p.key + ' ' + p.title:<74} {p.trials:>6} {p.passed:>6} {p.trials - p.passed:>6} {p.seconds:>6.0f}s")
            for k, v in sorted(p.counts.items()):
                print(f"      {k}: {v}")
        trials = sum(p.trials for p in self.parts)
        failed = sum(p.trials - p.passed for p in self.parts)
        print(f"{'total':<74} {trials:>6} {trials - failed:>6} {failed:>6} {total:>6.0f}s")
        for p in self.parts:
            for note in p.notes:
                print(f"note [{p.key} {p.title}]: {note}")
        for p in self.parts:
            for f in p.failures:
                print(f"FAIL [{p.key} {p.title}] {f}")
        return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/cairn")
    ap.add_argument("--quick", action="store_true", help="a few-minute smoke run: fewer moments, trials and rounds")
    ap.add_argument("--workdir", default="/var/tmp/cairn-hostile", help="scratch space (removed first; about 1 GiB)")
    ap.add_argument("--json", help="also write the counts and failures as JSON to this file")
    ap.add_argument("--only", default="1,2,3,4,5", help="parts to run, e.g. 1,3")
    ap.add_argument("--case", default="", help="part 5: only the cases whose name contains this")
    ap.add_argument("--seed", type=int, default=20, help="seed of every random choice and byte")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--verbose", action="store_true", help="print a line per trial as it ends")
    args = ap.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    if not Path(args.binary).is_file():
        sys.exit(f"no cairn binary at {args.binary}: run `cargo build --release` or pass --binary")
    campaign = Campaign(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, failed = time.monotonic(), 1
    try:
        for n in args.only.split(","):
            part_started = len(campaign.parts)
            try:
                getattr(campaign, f"part{n.strip()}")()
            except Exception as e:
                p = campaign.parts[-1] if len(campaign.parts) > part_started else campaign.part(n, "setup")
                p.record([f"the part stopped: {type(e).__name__}: {e}"], "harness")
                campaign.done(p)
    finally:
        if campaign.moto:
            campaign.moto.stop()
        for proc in campaign.background:
            proc.wait()
        total = time.monotonic() - started
        failed = campaign.report(total)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "binary": str(campaign.binary), "seed": args.seed, "quick": args.quick, "seconds": round(total, 1),
                "failed": failed, "parts": [p.as_json() for p in campaign.parts]}, indent=2))
        if not args.keep:
            shutil.rmtree(campaign.work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
