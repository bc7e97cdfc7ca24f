#!/usr/bin/env python3
"""Checks that every schema migration can run beside the code of the release before it.

During a rolling, canary or blue/green release the new version's pods migrate the
schema at start-up (sqlx::migrate! in PgConfig::prepare) while the previous version's
pods keep serving against the same database, and after a rollback the previous
version runs against the migrated schema alone. So a migration may only *expand* (new
tables, nullable columns or columns with a default, new indexes); a *contract* (drop,
rename, retype, tighten) has to wait for a later release, once no running code uses
the thing any more. docs/DEPLOYMENT.md, "Schema changes: expand, then contract".

For each services/<svc>/migrations/*.sql this finds the commit that added it (the
oldest `git log --diff-filter=A`) and reads services/<svc>/src of that commit's
parent: the release before. A migration not committed yet (untracked or staged) is
checked against HEAD's sources. In a shallow clone, where the adding commit's parent
is not there, it says so and checks against HEAD's sources.

What counts as destructive, and when it is a violation:

  DROP TABLE t / ALTER TABLE t RENAME TO u     t is referenced by the release before
  ALTER TABLE t DROP COLUMN c                  column c of t is used by it
  ALTER TABLE t RENAME [COLUMN] c TO d         column c of t is used by it
  ALTER TABLE t ALTER COLUMN c TYPE ...        column c of t is used by it (it decodes
                                               the old type)
  ALTER TABLE t ALTER COLUMN c SET NOT NULL    it has an INSERT INTO t that does not
    (or ALTER COLUMN c DROP DEFAULT)           name c in its column list (one naming
                                               c is trusted not to bind NULL)
  ALTER TABLE t ADD COLUMN c ... NOT NULL      it inserts into t (its INSERTs do not
    without DEFAULT (or GENERATED, serial)     name c)
  ALTER TABLE t DROP/RENAME CONSTRAINT k       k is named by it (error mapping by
                                               constraint name), unless the same
                                               migration adds k again
  DROP FUNCTION f(args)                        it calls f(, unless the same migration
                                               creates f again with the same argument
                                               types
  CREATE INDEX without CONCURRENTLY, or ADD    t is one of BIG_TABLES (the tables that
    PRIMARY KEY / UNIQUE without USING INDEX,  grow with every trade and order): the
    on a table t                               build blocks its writes, old pods'
                                               included, for as long as it takes
                                               (TimescaleDB hypertables may use
                                               WITH (timescaledb.transaction_per_chunk))

Anything on a table the same migration creates is skipped (nobody used it before).

"Used by the release before" is decided on the string literals of the service's
.rs files (regular and raw strings; comments and code outside literals are ignored):

  * a table t is referenced when a literal names it after FROM, JOIN, INTO, UPDATE,
    TABLE, COPY or TRUNCATE (optionally schema-qualified), or a literal is just "t";
  * column c of t is used when a file that references t has a literal containing c
    as a whole word (case-insensitive), or selects `*` / `t.*` / RETURNING * from t
    (a FromRow struct then decodes every column). Literals of the whole file count,
    not only the statement naming t, so column lists kept in constants are seen;
  * a file inserts into t when a literal has INSERT INTO t, MERGE INTO t or COPY t.

So the rule leans to false positives (a column named like a word in an error message
of the same file) rather than misses; on this repository's history it reports only
real breaks. It does not see SQL built from pieces spread over several files, nor
the services' tests, nor PL/pgSQL bodies (a migration replaces those atomically).

A committed migration must never change (sqlx checksums applied ones and refuses to
start): an uncommitted edit or deletion is a violation no allowlist can excuse; an
edit made in history is reported like the other violations.

Historical exceptions (migrations from before blue/green existed, whose breaks were
deliberate) are listed in scripts/lib/migrations-allowlist.txt, one per line:
`<path>  <reason>`. An entry excuses every violation of that file; an entry that no
longer matches any violation is itself a violation, so the list cannot rot.

Output: one VIOLATION line each, an `allowlisted` line per excused file (one per
violation with --verbose), notes, and a summary line. Exit 1 on any violation.

Usage: check_migrations.py [--repo DIR] [--allowlist FILE] [--verbose]
       check_migrations.py --self-test
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ALLOWLIST = "scripts/lib/migrations-allowlist.txt"
MIGRATION = re.compile(r"^services/([^/]+)/migrations/[^/]+\.sql$")

# Tables that grow with every trade, order or fill (docs/ARCHITECTURE.md): building an
# index on them under a lock stalls every pod's writes, the previous release's too.
BIG_TABLES = {
    "market-data": {"trades", "candles_1m"},
    "inventory": {"ledger", "reservations"},
    "order": {"orders", "executions"},
}


# --------------------------------------------------------------------------- git


class Git:
    def __init__(self, repo: Path, env: dict[str, str] | None = None):
        self.repo = repo
        self.env = env

    def run(self, *args: str, check: bool = True) -> str:
        p = subprocess.run(
            ["git", "-C", str(self.repo), *args],
            capture_output=True,
            env=self.env,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)}: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout.decode(errors="replace")

    def ok(self, *args: str) -> bool:
        return subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True, env=self.env).returncode == 0

    def cat_files(self, specs: list[str]) -> dict[str, str]:
        """Contents of `<rev>:<path>` objects, read in one `git cat-file --batch`."""
        if not specs:
            return {}
        p = subprocess.run(
            ["git", "-C", str(self.repo), "cat-file", "--batch"],
            input="".join(s + "\n" for s in specs).encode(),
            capture_output=True,
            env=self.env,
            check=True,
        )
        out, pos, result = p.stdout, 0, {}
        for spec in specs:
            end = out.index(b"\n", pos)
            header = out[pos:end].decode()
            pos = end + 1
            if header.endswith(" missing"):
                continue
            size = int(header.split()[2])
            result[spec] = out[pos : pos + size].decode(errors="replace")
            pos += size + 1
        return result


# --------------------------------------------------------------------------- Rust sources


def rust_literals(text: str) -> list[str]:
    """The string literals of a Rust file (regular, raw, byte), escapes resolved loosely."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c in "rb" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.compile(r'b?r(#*)"|b"').match(text, i)
            if not m:
                i += 1
                while i < n and (text[i].isalnum() or text[i] == "_"):
                    i += 1
                continue
            if m.group(0) == 'b"':
                i = m.end() - 1
                continue  # a byte string: read as a regular string next round
            close = '"' + m.group(1)
            j = text.find(close, m.end())
            j = n if j < 0 else j
            out.append(text[m.end() : j])
            i = j + len(close)
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    if nxt == "\n":  # line continuation: the next line's indent goes
                        j += 2
                        while j < n and text[j] in " \t\r\n":
                            j += 1
                        buf.append(" ")
                        continue
                    buf.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(nxt, nxt))
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
        elif c == "'":
            m = re.compile(r"'(?:\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'\n])'").match(text, i)
            i = m.end() if m else i + 1  # else a lifetime
        elif c.isalnum() or c == "_":
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
        else:
            i += 1
    return out


IDENT = r'(?:"?\w+"?\.)?"?(\w+)"?'
TABLE_REF = re.compile(r"\b(?:from|join|into|update|table|copy|truncate)\s+(?:only\s+)?" + IDENT, re.I)
INSERT_REF = re.compile(r"\b(?:insert\s+into|merge\s+into|copy)\s+" + IDENT, re.I)
INSERT_LIST = re.compile(r"\b(?:insert\s+into|copy)\s+" + IDENT + r"(?:\s+as\s+\w+)?\s*(?:\(([^)]*)\))?", re.I)
STAR = re.compile(r"\b(?:select|returning)\s+(?:distinct\s+)?(?:\w+\.)?\*", re.I)


def word(name: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w$])" + re.escape(name) + r"(?![\w$])", re.I)


@dataclass
class SourceFile:
    path: str
    literals: list[str]
    tables: set[str] = field(default_factory=set)
    inserts: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for lit in self.literals:
            self.tables.update(t.lower() for t in TABLE_REF.findall(lit))
            self.inserts.update(t.lower() for t in INSERT_REF.findall(lit))
            if re.fullmatch(r"\s*\w+\s*", lit):
                self.tables.add(lit.strip().lower())

    def has(self, pattern: re.Pattern[str]) -> bool:
        return any(pattern.search(lit) for lit in self.literals)


@dataclass
class Sources:
    """One service's src at one commit (the release before a migration)."""

    label: str  # "abc1234", "HEAD", or "none" (the service did not exist)
    files: list[SourceFile]

    def table_users(self, table: str) -> list[str]:
        return [f.path for f in self.files if table in f.tables]

    def column_users(self, table: str, column: str) -> list[str]:
        w = word(column)
        qualified = re.compile(r"\b" + re.escape(table) + r"\.\*", re.I)

        def star(lit: str) -> bool:
            return bool(qualified.search(lit)) or (
                bool(STAR.search(lit)) and table in (t.lower() for t in TABLE_REF.findall(lit))
            )

        return [
            f.path
            for f in self.files
            if table in f.tables and (f.has(w) or any(star(lit) for lit in f.literals))
        ]

    def inserters(self, table: str, naming: str = "") -> list[str]:
        """Files inserting into table (only by statements that do not name column
        `naming`, when given)."""
        if not naming:
            return [f.path for f in self.files if table in f.inserts]
        w = word(naming)

        def omits(lit: str) -> bool:
            for m in INSERT_LIST.finditer(lit):
                if m.group(1).lower() == table and not (m.group(2) is not None and w.search(m.group(2))):
                    return True
            return False

        return [f.path for f in self.files if table in f.inserts and any(omits(lit) for lit in f.literals)]

    def namers(self, name: str) -> list[str]:
        w = word(name)
        return [f.path for f in self.files if f.has(w)]

    def callers(self, function: str) -> list[str]:
        call = re.compile(r"(?<![\w$.])" + re.escape(function) + r"\s*\(", re.I)
        return [f.path for f in self.files if f.has(call)]


# --------------------------------------------------------------------------- SQL


def sql_statements(sql: str) -> list[str]:
    """Statements of a migration: comments removed, quoted text and dollar-quoted
    bodies blanked (their contents are not DDL of this file), whitespace collapsed."""
    out, cur, i, n = [], [], 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            cur.append(" ")
        elif c == "'":
            j = i + 1
            while j < n and not (sql[j] == "'" and not sql.startswith("''", j)):
                j += 2 if sql.startswith("''", j) else 1
            cur.append("''")
            i = j + 1
        elif c == '"':
            j = sql.find('"', i + 1)
            j = n if j < 0 else j
            cur.append(sql[i + 1 : j].lower().replace(" ", "_"))
            i = j + 1
        elif c == "$" and (m := re.compile(r"\$(\w*)\$").match(sql, i)) and not (i and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            j = sql.find(m.group(0), m.end())
            j = n if j < 0 else j
            cur.append(" $$ ")
            i = j + len(m.group(0))
        elif c == ";":
            out.append(" ".join("".join(cur).split()))
            cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    out.append(" ".join("".join(cur).split()))
    return [s for s in out if s]


def split_top(s: str) -> list[str]:
    """Splits on commas outside parentheses."""
    parts, depth, cur = [], 0, []
    for c in s:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def bare(name: str) -> str:
    return name.split(".")[-1].strip('"').lower()


TYPE_STARTS = {"double", "timestamp", "time", "character", "bit", "interval", "national", "varying"}


def arg_types(args: str) -> tuple[str, ...]:
    """Argument types of a function signature, without names, modes and defaults."""
    types = []
    for a in split_top(args):
        a = re.split(r"\s+default\s+|\s*=", a, maxsplit=1, flags=re.I)[0].strip().lower()
        words = a.split()
        if words and words[0] in ("in", "inout", "variadic"):
            words = words[1:]
        if words and words[0] == "out":
            continue
        if len(words) > 1 and words[0] not in TYPE_STARTS:
            words = words[1:]
        types.append(" ".join(words))
    return tuple(types)


@dataclass
class Change:
    kind: str  # what the check reports, e.g. "DROP COLUMN"
    target: str  # "t.c", "t", "k", "f(...)"
    table: str = ""
    column: str = ""
    name: str = ""  # constraint or function name
    signature: tuple[str, ...] = ()


@dataclass
class Migration:
    changes: list[Change] = field(default_factory=list)
    created_tables: set[str] = field(default_factory=set)
    added_constraints: set[str] = field(default_factory=set)
    created_functions: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)
    big_builds: list[tuple[str, str]] = field(default_factory=list)  # (what, on which table)


ALTER_TABLE = re.compile(r"^alter table (?:if exists )?(?:only )?([\w.]+)\s*\*?\s*(.*)$", re.I)


def parse_migration(sql: str) -> Migration:
    m = Migration()
    for st in sql_statements(sql):
        low = st.lower()
        if g := re.match(r"^create (?:unlogged |temporary |temp )?table (?:if not exists )?([\w.]+)", low):
            m.created_tables.add(bare(g.group(1)))
        elif g := re.match(r"^drop table (?:if exists )?(.*?)(?: cascade| restrict)?$", low):
            for t in split_top(g.group(1)):
                m.changes.append(Change("DROP TABLE", bare(t), table=bare(t)))
        elif g := re.match(r"^create (?:or replace )?function ([\w.]+)\s*\((.*?)\)\s*(?:returns|language|as|$)", low):
            m.created_functions.add((bare(g.group(1)), arg_types(g.group(2))))
        elif g := re.match(r"^drop function (?:if exists )?(.*?)(?: cascade| restrict)?$", low):
            for f in split_top(g.group(1)):
                fm = re.match(r"([\w.]+)\s*(?:\((.*)\))?$", f)
                if fm:
                    name = bare(fm.group(1))
                    sig = arg_types(fm.group(2) or "")
                    m.changes.append(Change("DROP FUNCTION", f"{name}({', '.join(sig)})", name=name, signature=sig))
        elif g := re.match(r"^create (unique )?index (concurrently )?(?:if not exists )?(?:([\w.]+) )?on (?:only )?([\w.]+)", low):
            if not g.group(2) and "transaction_per_chunk" not in low:
                name = f" {bare(g.group(3))}" if g.group(3) else ""
                m.big_builds.append((f"CREATE INDEX{name} without CONCURRENTLY", bare(g.group(4))))
        elif g := ALTER_TABLE.match(st):
            table = bare(g.group(1))
            for action in split_top(g.group(2)):
                parse_alter_action(m, table, action)
    return m


def parse_alter_action(m: Migration, t: str, action: str) -> None:
    a = action.lower()
    if g := re.match(r"^rename to (\w+)", a):
        m.changes.append(Change("RENAME TABLE", f"{t} to {g.group(1)}", table=t))
    elif g := re.match(r"^rename constraint (\w+) to", a):
        m.changes.append(Change("RENAME CONSTRAINT", f"{t}.{g.group(1)}", table=t, name=g.group(1)))
    elif g := re.match(r"^rename (?:column )?(\w+) to (\w+)", a):
        m.changes.append(Change("RENAME COLUMN", f"{t}.{g.group(1)} to {g.group(2)}", table=t, column=g.group(1)))
    elif g := re.match(r"^drop constraint (?:if exists )?(\w+)", a):
        m.changes.append(Change("DROP CONSTRAINT", f"{t}.{g.group(1)}", table=t, name=g.group(1)))
    elif g := re.match(r"^drop (?:column )?(?:if exists )?(\w+)", a):
        m.changes.append(Change("DROP COLUMN", f"{t}.{g.group(1)}", table=t, column=g.group(1)))
    elif g := re.match(r"^alter (?:column )?(\w+) (?:set data )?type ", a):
        m.changes.append(Change("ALTER COLUMN TYPE", f"{t}.{g.group(1)}", table=t, column=g.group(1)))
    elif g := re.match(r"^alter (?:column )?(\w+) set not null", a):
        m.changes.append(Change("SET NOT NULL", f"{t}.{g.group(1)}", table=t, column=g.group(1)))
    elif g := re.match(r"^alter (?:column )?(\w+) drop default", a):
        m.changes.append(Change("DROP DEFAULT", f"{t}.{g.group(1)}", table=t, column=g.group(1)))
    elif g := re.match(r"^add (?:constraint (\w+) )?(primary key|unique|check|foreign key|exclude)\b", a):
        if g.group(1):
            m.added_constraints.add(g.group(1))
        elif g.group(2) == "primary key":
            m.added_constraints.add(f"{t}_pkey")  # Postgres's name for it
        if g.group(2) in ("primary key", "unique") and "using index" not in a:
            name = f"CONSTRAINT {g.group(1)} " if g.group(1) else ""
            m.big_builds.append((f"ADD {name}{g.group(2).upper()} without USING INDEX", t))
    elif g := re.match(r"^add (?:column )?(?:if not exists )?(\w+) (.*)$", a):
        col, rest = g.group(1), g.group(2)
        if (
            re.search(r"\bnot null\b", rest)
            and not re.search(r"\b(default|generated)\b", rest)
            and not re.match(r"(small|big)?serial\b", rest)
        ):
            m.changes.append(Change("ADD COLUMN NOT NULL without DEFAULT", f"{t}.{col}", table=t, column=col))


# --------------------------------------------------------------------------- the check


@dataclass
class Result:
    lines: list[str]
    files: int
    allowlisted: int
    violations: int


def check(repo: Path, allowlist: Path | None, git_env: dict[str, str] | None = None, verbose: bool = True) -> Result:
    git = Git(repo, git_env)
    root = Path(git.run("rev-parse", "--show-toplevel").strip())
    git = Git(root, git_env)
    lines: list[str] = []
    has_head = git.ok("rev-parse", "--verify", "-q", "HEAD")

    shallow: set[str] = set()
    if git.run("rev-parse", "--is-shallow-repository").strip() == "true":
        shallow_file = Path(git.run("rev-parse", "--git-path", "shallow").strip())
        if not shallow_file.is_absolute():
            shallow_file = root / shallow_file
        if shallow_file.exists():
            shallow = set(shallow_file.read_text().split())

    # Which commit added each migration, and which edited it later.
    added: dict[str, tuple[str, list[str]]] = {}
    edited: dict[str, list[str]] = {}
    if has_head:
        log = git.run(
            "log", "--no-renames", "--diff-filter=AM", "--format=@%H %P", "--name-status",
            "--", "services/*/migrations/*.sql",
        )
        commit, parents = "", []
        for line in log.splitlines():
            if line.startswith("@"):
                commit, *parents = line[1:].split()
            elif line.strip():
                status, path = line.split("\t", 1)
                if status == "A":
                    added[path] = (commit, parents)  # log is newest first: the oldest wins
                elif status == "M":
                    edited.setdefault(path, []).append(commit[:7])

    # Migrations of the working tree, and committed ones since changed or deleted there.
    files = sorted(
        str(p.relative_to(root)) for p in root.glob("services/*/migrations/*.sql") if MIGRATION.match(str(p.relative_to(root)))
    )
    head_files = set(git.run("ls-tree", "-r", "--name-only", "HEAD", "--", "services").split()) if has_head else set()
    head_migrations = sorted(f for f in head_files if MIGRATION.match(f))
    head_text = git.cat_files([f"HEAD:{f}" for f in head_migrations])

    violations: dict[str, list[str]] = {}  # path -> descriptions (allowlistable)
    hard: list[str] = []  # never allowlistable
    degraded: set[str] = set()
    cache: dict[tuple[str, str], Sources] = {}

    def sources(rev: str | None, svc: str, label: str) -> Sources:
        key = (rev or "", svc)
        if key not in cache:
            if rev is None:
                cache[key] = Sources(label, [])
            else:
                listing = git.run("ls-tree", "-r", "--name-only", rev, "--", f"services/{svc}/src").split()
                listing = [p for p in listing if p.endswith(".rs")]
                text = git.cat_files([f"{rev}:{p}" for p in listing])
                cache[key] = Sources(label, [SourceFile(p, rust_literals(text[f"{rev}:{p}"])) for p in listing if f"{rev}:{p}" in text])
        return cache[key]

    for f in head_migrations:
        if f not in files:
            hard.append(f"VIOLATION {f}: deleted from the working tree; sqlx refuses to start without an applied migration")

    for path in files:
        svc = MIGRATION.match(path).group(1)
        text = (root / path).read_text(errors="replace")
        if head_text.get(f"HEAD:{path}", text) != text:
            hard.append(f"VIOLATION {path}: changed in the working tree; an applied migration must never change (sqlx checksums it)")
        if path in added:
            commit, parents = added[path]
            if commit in shallow:
                degraded.add(path)
                src = sources("HEAD", svc, "HEAD")
            elif not parents:
                src = sources(None, svc, "none")
            else:
                src = sources(parents[0], svc, parents[0][:7])
        else:
            src = sources("HEAD" if has_head else None, svc, "HEAD" if has_head else "none")

        found = evaluate(parse_migration(text), svc, src)
        for commit in edited.get(path, []):
            found.append(f"edited after it was added (in {commit}); sqlx checksums applied migrations")
        if found:
            violations[path] = found

    if degraded:
        lines.append(
            f"note: {len(degraded)} migration(s) came with the first commit of this shallow clone "
            "(their adding commit's parent is not here); checked against HEAD's sources: "
            + ", ".join(sorted(degraded))
        )

    # The allowlist.
    entries: dict[str, str] = {}
    bad_entries: list[str] = []
    if allowlist and allowlist.exists():
        for n, raw in enumerate(allowlist.read_text().splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) < 2:
                bad_entries.append(f"VIOLATION {allowlist.name}:{n}: an entry needs a reason: {line}")
                continue
            entries[parts[0]] = parts[1]

    count = 0
    allowed = 0
    for path in files:
        found = violations.get(path, [])
        if path in entries and found:
            allowed += 1
            if verbose:
                lines.extend(f"allowlisted {path}: {desc}" for desc in found)
            else:
                n = f"{len(found)} violation{'s' if len(found) > 1 else ''}"
                lines.append(f"allowlisted {path}: {n}, {entries[path].split(':')[0]} (--verbose lists them)")
            continue
        for desc in found:
            lines.append(f"VIOLATION {path}: {desc}")
            count += 1
    for path in entries:
        if path not in violations:
            if path in degraded:
                lines.append(f"note: allowlist entry {path} matched nothing, but it was checked against HEAD (shallow clone); not enforced")
            else:
                lines.append(f"VIOLATION {allowlist.name if allowlist else ALLOWLIST}: entry {path} matches no violation (remove it)")
                count += 1
    lines.extend(bad_entries)
    lines.extend(hard)
    count += len(bad_entries) + len(hard)
    lines.append(f"migrations: {len(files)} files checked ({allowed} allowlisted), {count} violation{'' if count == 1 else 's'}")
    return Result(lines, len(files), allowed, count)


def evaluate(m: Migration, svc: str, src: Sources) -> list[str]:
    found = []

    def where(paths: list[str]) -> str:
        return f"{', '.join(sorted(paths))} at {src.label}"

    for c in m.changes:
        if c.table and c.table in m.created_tables:
            continue
        if c.kind in ("DROP TABLE", "RENAME TABLE"):
            if users := src.table_users(c.table):
                found.append(f"{c.kind} {c.target}, still used by the release before ({where(users)})")
        elif c.kind in ("DROP COLUMN", "RENAME COLUMN", "ALTER COLUMN TYPE"):
            if users := src.column_users(c.table, c.column):
                found.append(f"{c.kind} {c.target}, still used by the release before ({where(users)})")
        elif c.kind == "ADD COLUMN NOT NULL without DEFAULT":
            if users := src.inserters(c.table):
                found.append(f"{c.kind} {c.target}, the release before inserts into {c.table} ({where(users)})")
        elif c.kind in ("SET NOT NULL", "DROP DEFAULT"):
            if users := src.inserters(c.table, naming=c.column):
                found.append(f"{c.kind} {c.target}, the release before inserts into {c.table} without naming {c.column} ({where(users)})")
        elif c.kind in ("DROP CONSTRAINT", "RENAME CONSTRAINT"):
            if c.kind == "DROP CONSTRAINT" and c.name in m.added_constraints:
                continue
            if users := src.namers(c.name):
                found.append(f"{c.kind} {c.target}, named by the release before ({where(users)})")
        elif c.kind == "DROP FUNCTION":
            if (c.name, c.signature) in m.created_functions:
                continue
            if users := src.callers(c.name):
                found.append(f"{c.kind} {c.target}, called by the release before ({where(users)})")
    big = BIG_TABLES.get(svc, set())
    for what, table in m.big_builds:
        if table in big and table not in m.created_tables:
            found.append(f"{what} on big table {table}: its index is built under a lock that blocks writes, the running release's too")
    return found


# --------------------------------------------------------------------------- self-test


class FakeRepo:
    """A throwaway repository with one fake service, services/order."""

    def __init__(self, base: Path, name: str):
        self.dir = base / name
        self.dir.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update(
            GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
            GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
        )
        self.git = Git(self.dir, self.env)
        self.git.run("init", "-q")

    def write(self, path: str, text: str) -> None:
        p = self.dir / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def remove(self, path: str) -> None:
        (self.dir / path).unlink()

    def commit(self, msg: str, **files: str) -> None:
        for path, text in files.items():
            self.write(path.replace("__", "/"), text)
        self.git.run("add", "-A")
        self.git.run("commit", "-q", "--no-gpg-sign", "-m", msg)

    def check(self, allowlist: str | None = None) -> Result:
        path = None
        if allowlist is not None:
            path = self.dir.parent / f"{self.dir.name}-allowlist.txt"
            path.write_text(allowlist)
        return check(self.dir, path, self.env)


SCHEMA = """CREATE TABLE users (id UUID PRIMARY KEY, nick TEXT, email TEXT NOT NULL);
CREATE TABLE orders (id UUID PRIMARY KEY, user_id UUID NOT NULL);
"""
STORE_V1 = '''//! the store
pub const COLUMNS: &str = "id, nick, email";

pub async fn add(pool: &PgPool) {
    sqlx::query("INSERT INTO users (id, nick, email) VALUES ($1, $2, $3)").execute(pool).await;
    let _x = r#"SELECT id FROM orders WHERE user_id = $1"#;
}
'''
STORE_V2 = '''//! the store, no longer reading nick
pub const COLUMNS: &str = "id, email"; // nick is gone
pub async fn add(pool: &PgPool) {
    sqlx::query("INSERT INTO users (id, email) VALUES ($1, $2)").execute(pool).await;
}
'''
M1 = "services/order/migrations/0001_init.sql"
M2 = "services/order/migrations/0002_next.sql"
M3 = "services/order/migrations/0003_later.sql"
STORE = "services/order/src/store.rs"


def self_test(verbose: bool = False) -> int:
    cases: list[tuple[str, bool, str]] = []  # (name, ok, detail)
    base = Path(tempfile.mkdtemp(prefix="check-migrations-"))

    def expect(name: str, result: Result, violations: bool, needle: str = "") -> None:
        text = "\n".join(result.lines)
        ok = (result.violations > 0) == violations and needle in text
        cases.append((name, ok, text))

    def release1(name: str) -> FakeRepo:
        r = FakeRepo(base, name)
        r.commit("v1", **{M1.replace("/", "__"): SCHEMA, STORE.replace("/", "__"): STORE_V1})
        return r

    try:
        r = release1("a")
        r.commit("drop", **{M2.replace("/", "__"): "ALTER TABLE users DROP COLUMN nick;\n"})
        expect("(a) DROP COLUMN of a column the previous commit reads fails", r.check(), True,
               f"VIOLATION {M2}: DROP COLUMN users.nick, still used by the release before ({STORE} at")

        r = release1("b")
        r.commit("rename", **{M2.replace("/", "__"): 'ALTER TABLE "users" RENAME COLUMN nick TO handle;\n'})
        expect("(b) RENAME COLUMN of a column in use fails", r.check(), True, "RENAME COLUMN users.nick to handle")

        r = release1("c")
        r.commit("not null", **{M2.replace("/", "__"): "ALTER TABLE users\n  ADD COLUMN plan TEXT NOT NULL,\n  ADD COLUMN x INT NOT NULL DEFAULT 0;\n"})
        text = "\n".join(r.check().lines)
        cases.append(("(c) ADD COLUMN NOT NULL without DEFAULT on a table the old code inserts into fails (with a DEFAULT it passes)",
                      "ADD COLUMN NOT NULL without DEFAULT users.plan, the release before inserts into users" in text
                      and "users.x" not in text, text))

        r = release1("d")
        r.commit("expand", **{M2.replace("/", "__"): "ALTER TABLE users ADD COLUMN handle TEXT;\n"
                              "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);\n"
                              "ALTER TABLE notes ADD COLUMN owner UUID NOT NULL;\n"
                              "CREATE INDEX notes_by_owner ON notes (owner);\n"})
        expect("(d) expand (ADD COLUMN nullable, CREATE TABLE) passes", r.check(), False, "0 violations")

        r = release1("e")
        r.commit("expand: handle", **{M2.replace("/", "__"): "ALTER TABLE users ADD COLUMN handle TEXT;\n"})
        r.commit("code stops using nick", **{STORE.replace("/", "__"): STORE_V2})
        r.commit("contract: drop nick", **{M3.replace("/", "__"): "ALTER TABLE users DROP COLUMN IF EXISTS nick;\n"})
        expect("(e) contract two releases later, after the code stopped using the column, passes",
               r.check(), False, "3 files checked (0 allowlisted), 0 violations")

        r = release1("f")
        r.commit("drop", **{M2.replace("/", "__"): "ALTER TABLE users DROP COLUMN nick;\n"})
        expect("(f) an allowlisted violation passes", r.check(f"# history\n{M2}  signed everyone out once, on purpose\n"),
               False, f"allowlisted {M2}: DROP COLUMN users.nick")
        expect("(f) a stale allowlist entry fails", r.check(f"{M2}  reason\n{M1}  no longer matches\n"),
               True, f"entry {M1} matches no violation")
        expect("(f) an allowlist entry without a reason fails", r.check(f"{M2}\n"), True, "needs a reason")

        r = release1("g")
        r.write(M2, "DROP TABLE IF EXISTS users CASCADE;\n")
        expect("(g) an untracked migration is checked against HEAD", r.check(), True, "DROP TABLE users, still used by the release before")
        r.git.run("add", M2)
        expect("(g) ... and so is a staged one", r.check(), True, f"{STORE} at HEAD")

        r = release1("h")
        r.write(M1, SCHEMA + "-- an afterthought\n")
        expect("(h) an edit of a committed migration fails", r.check(f"{M1}  cannot excuse this\n"), True, "changed in the working tree")
        r.commit("edit")
        expect("(h) ... and an edit in history is reported", r.check(), True, "edited after it was added")

        r = release1("i")
        r.commit("expand", **{M2.replace("/", "__"): "ALTER TABLE users ADD COLUMN plan TEXT;\n"})
        r.commit("types", **{M3.replace("/", "__"): "ALTER TABLE users ALTER COLUMN plan SET NOT NULL, ALTER COLUMN email SET NOT NULL,\n"
                             "  ALTER COLUMN nick TYPE VARCHAR(20), ALTER COLUMN plan DROP DEFAULT;\n"
                             "ALTER TABLE orders ALTER COLUMN user_id SET DATA TYPE TEXT;\n"})
        text = "\n".join(r.check().lines)
        cases.append(("(i) SET NOT NULL / DROP DEFAULT of a column old INSERTs omit and ALTER COLUMN TYPE of one in use fail; "
                      "SET NOT NULL of a column every old INSERT names passes",
                      "SET NOT NULL users.plan, the release before inserts into users without naming plan" in text
                      and "DROP DEFAULT users.plan" in text and "users.email" not in text
                      and "ALTER COLUMN TYPE users.nick" in text and "ALTER COLUMN TYPE orders.user_id" in text, text))

        r = release1("j")
        r.commit("index", **{M2.replace("/", "__"): "CREATE INDEX orders_by_user ON orders (user_id);\n"
                             "CREATE INDEX users_by_email ON users (email);\n"})
        text = "\n".join(r.check().lines)
        cases.append(("(j) CREATE INDEX without CONCURRENTLY on a big table fails, on a small one passes",
                      "CREATE INDEX orders_by_user without CONCURRENTLY on big table orders" in text and "table users" not in text, text))
        r = release1("j2")
        r.commit("index", **{M2.replace("/", "__"): "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS orders_by_user ON orders (user_id);\n"})
        expect("(j) CREATE INDEX CONCURRENTLY on a big table passes", r.check(), False, "0 violations")

        r = release1("k")
        r.write(STORE, STORE_V1 + 'const Q: &str = "SELECT settle($1, $2)"; // err on "orders_user_fk"\n'
                'const E: &str = "orders_user_fk";\n')
        r.commit("functions", **{M2.replace("/", "__"): "CREATE FUNCTION settle(p_order uuid, p_n integer) RETURNS void LANGUAGE sql AS $$ SELECT 1 $$;\n"
                                 "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id);\n"})
        r.commit("replace same signature", **{M3.replace("/", "__"): "DROP FUNCTION settle(uuid, integer);\n"
                                              "CREATE FUNCTION settle(p_order uuid, p_n integer DEFAULT 0) RETURNS void LANGUAGE sql AS $$\n"
                                              "  DROP TABLE users; $$;\n"})
        expect("(k) DROP FUNCTION re-created with the same argument types passes", r.check(), False, "0 violations")
        r.write("services/order/migrations/0004_x.sql", "DROP FUNCTION settle(uuid, integer);\n"
                "ALTER TABLE orders DROP CONSTRAINT orders_user_fk;\n")
        text = "\n".join(r.check().lines)
        cases.append(("(k) DROP FUNCTION called / DROP CONSTRAINT named by the old code fails",
                      "DROP FUNCTION settle(uuid, integer), called by" in text and "DROP CONSTRAINT orders.orders_user_fk, named by" in text, text))

        r = release1("l")
        r.commit("drop", **{M2.replace("/", "__"): "ALTER TABLE users DROP COLUMN nick;\n"})
        clone = base / "l-shallow"
        subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{r.dir}", str(clone)], env=r.env, check=True, capture_output=True)
        result = check(clone, None, r.env)
        expect("(l) a shallow clone notes the missing parent and checks against HEAD", result, True,
               "parent is not here); checked against HEAD's sources: " + M1)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    failed = [c for c in cases if not c[1]]
    for name, ok, detail in cases:
        if verbose or not ok:
            print(f"  {'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            print("       " + detail.replace("\n", "\n       "))
    if failed:
        print(f"migrations self-test: {len(failed)} of {len(cases)} cases FAILED")
        return 1
    print(f"migrations self-test: {len(cases)} cases passed")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[2]
    ap.add_argument("--repo", type=Path, default=here, help="repository root (default: this checkout)")
    ap.add_argument("--allowlist", type=Path, help=f"historical exceptions (default: <repo>/{ALLOWLIST})")
    ap.add_argument("--verbose", action="store_true", help="list each allowlisted violation (each case with --self-test)")
    ap.add_argument("--self-test", action="store_true", help="prove the check on throwaway repositories")
    args = ap.parse_args()
    if args.self_test:
        return self_test(args.verbose)
    result = check(args.repo, args.allowlist or args.repo / ALLOWLIST, verbose=args.verbose)
    print("\n".join(result.lines))
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
