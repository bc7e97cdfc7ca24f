#!/usr/bin/env python3
"""Checks that every service's README names each environment variable its binary reads and each RPC it serves.

Each crate under services/ has a README.md (ports, env vars, RPCs). It is written by
hand, so it goes stale when a flag or an RPC is added, renamed or removed; this check
keeps it true to the two sources that cannot be stale: the built binary's --help and
the .proto contracts. For each services/<svc>/ with a Cargo.toml (its binary is the
`[[bin]] name`, else the folder's name):

  * services/<svc>/README.md exists;
  * every variable `$BIN_DIR/<svc> --help` lists (`[env: NAME=...]`, or `[env: NAME]`
    for the variables whose values clap hides), and every variable of each of its
    subcommands (`<svc> <command> --help`, e.g. `market-data backfill`), is named in
    the README in code: inside `backticks` or a fenced block;
  * the crate's gRPC services are found in its src/ (`exchange_proto::<pkg>::v1::
    <name>_service_server`), their `service <Name>Service { rpc X(...) }` blocks read
    from proto/exchange/<pkg>/v1/*.proto, and every RPC is named in the README in
    code. A crate that serves none (gateway, ingestor, upbit-sim) skips this;
  * the other way round, every row of a README table whose header starts with
    `variable` must name a variable --help lists, and every row of one whose header
    starts with `RPC` an RPC the crate serves: a README cannot keep documenting what
    is gone;
  * every service defined under proto/exchange/ is served by some crate (or its RPCs
    would be documented nowhere).

"Named in code" rather than anywhere: RPC names are ordinary words (Login, Deposit,
Settle) that prose uses too.

BIN_DIR defaults to ${CARGO_TARGET_DIR}/debug, or <repo>/target/debug without it: where
`cargo build` puts the binaries. scripts/test runs this right after its build, with
BIN_DIR set to the directory it built into.

Output: one VIOLATION line each and a summary line; exit 1 on any violation.

Usage: check_readmes.py [--repo DIR] [--bin-dir DIR] [--verbose]
       check_readmes.py --self-test
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ENV_RE = re.compile(r"\[env:\s+([A-Za-z_][A-Za-z0-9_]*)\s*[=\]]")
WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SERVER_RE = re.compile(r"exchange_proto::(\w+)::v1::(\w+)_service_server\b")
FENCE_RE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[ \t]*$", re.M | re.S)
SPAN_RE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


@dataclass
class Result:
    lines: list[str] = field(default_factory=list)
    violations: int = 0
    services: int = 0
    env_vars: int = 0
    rpcs: int = 0

    def violation(self, text: str) -> None:
        self.lines.append(f"VIOLATION {text}")
        self.violations += 1


# --------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=None)
def run_help(binary: str, *args: str) -> tuple[int, str]:
    """The binary's --help text (cached: the self-test reads the same binaries often)."""
    try:
        done = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, str(e)
    return done.returncode, done.stdout + done.stderr


def subcommands(help_text: str) -> list[str]:
    """The names under `Commands:` (clap's layout), `help` excepted."""
    names, inside = [], False
    for line in help_text.splitlines():
        if line.strip() == "Commands:":
            inside = True
            continue
        if inside:
            if not line.startswith("  ") or not line.strip():
                break
            name = line.split()[0]
            if name != "help":
                names.append(name)
    return names


def env_vars(binary: Path, res: Result, label: str) -> list[tuple[str, str]] | None:
    """(variable, where) for the binary and its subcommands, or None when it cannot be run."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        res.violation(f"{label}: {binary} is not built (cargo build --workspace --bins, or set BIN_DIR)")
        return None
    code, text = run_help(str(binary))
    if code != 0:
        res.violation(f"{label}: `{binary.name} --help` failed ({code}): {text.strip()[:300]}")
        return None
    found = [(name, f"{binary.name} --help") for name in ENV_RE.findall(text)]
    for cmd in subcommands(text):
        code, sub = run_help(str(binary), cmd)
        if code != 0:
            res.violation(f"{label}: `{binary.name} {cmd} --help` failed ({code}): {sub.strip()[:300]}")
            continue
        found += [(name, f"{binary.name} {cmd} --help") for name in ENV_RE.findall(sub)]
    seen, unique = set(), []
    for name, where in found:
        if name not in seen:
            seen.add(name)
            unique.append((name, where))
    return unique


def strip_proto_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def proto_services(repo: Path) -> dict[tuple[str, str], tuple[Path, list[str]]]:
    """(package, ServiceName) -> (file, RPC names) for every service under proto/exchange."""
    out = {}
    for path in sorted((repo / "proto" / "exchange").glob("*/v1/*.proto")):
        pkg = path.parent.parent.name
        text = strip_proto_comments(path.read_text())
        for m in re.finditer(r"\bservice\s+(\w+)\s*\{", text):
            depth, i = 1, m.end()
            while i < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            body = text[m.end():i]
            out[(pkg, m.group(1))] = (path, re.findall(r"\brpc\s+(\w+)\s*\(", body))
    return out


def served(crate: Path) -> set[tuple[str, str]]:
    """(package, ServiceName) of each generated server the crate's src/ uses."""
    found = set()
    for rs in sorted((crate / "src").rglob("*.rs")):
        for pkg, snake in SERVER_RE.findall(rs.read_text(errors="replace")):
            found.add((pkg, "".join(p.capitalize() for p in snake.split("_")) + "Service"))
    return found


def binary_name(crate: Path) -> str:
    m = re.search(r'^\[\[bin\]\]\s*\n(?:[^\[\n][^\n]*\n)*?name\s*=\s*"([^"]+)"', (crate / "Cargo.toml").read_text(), re.M)
    return m.group(1) if m else crate.name


# --------------------------------------------------------------------------- README


def code_words(text: str) -> set[str]:
    """Every identifier-like word inside fenced blocks or inline code spans."""
    words: set[str] = set()
    for m in FENCE_RE.finditer(text):
        words.update(WORD_RE.findall(m.group(0)))
    for m in SPAN_RE.finditer(FENCE_RE.sub("", text)):
        words.update(WORD_RE.findall(m.group(2)))
    return words


def table_rows(text: str, header: str) -> list[tuple[int, str]]:
    """(line number, first cell) of each data row of the tables whose first header cell is `header`."""
    rows, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            first = lines[i].strip().strip("|").split("|")[0].strip().lower()
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                if first == header.lower():
                    rows.append((i + 1, lines[i].strip().strip("|").split("|")[0].strip()))
                i += 1
        else:
            i += 1
    return rows


def first_code(cell: str) -> str | None:
    m = SPAN_RE.search(cell)
    return m.group(2).strip() if m else None


# --------------------------------------------------------------------------- check


def check(repo: Path, bin_dir: Path, only: list[str] | None = None) -> Result:
    res = Result()
    protos = proto_services(repo)
    crates = sorted(p.parent for p in (repo / "services").glob("*/Cargo.toml"))
    all_served: set[tuple[str, str]] = set()
    for crate in crates:
        all_served |= served(crate)
    for key, (path, _) in sorted(protos.items()):
        if key not in all_served:
            res.violation(f"{path.relative_to(repo)}: service {key[1]} is served by no crate under services/, "
                          "so no README documents its RPCs")
    for crate in crates:
        if only is not None and crate.name not in only:
            continue
        res.services += 1
        readme = crate / "README.md"
        label = str(readme.relative_to(repo))
        if not readme.is_file():
            res.violation(f"{label}: missing (ports, env vars, RPCs; see the other services' READMEs)")
            continue
        text = readme.read_text()
        words = code_words(text)

        env = env_vars(bin_dir / binary_name(crate), res, label)
        if env is not None:
            res.env_vars += len(env)
            for name, where in env:
                if name not in words:
                    res.violation(f"{label}: does not name `{name}` (listed by `{where}`)")
            known = {name for name, _ in env}
            for line, cell in table_rows(text, "variable"):
                name = first_code(cell)
                if name and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name) and name not in known:
                    res.violation(f"{label}:{line}: lists `{name}`, which `{binary_name(crate)} --help` does not")

        rpcs: dict[str, Path] = {}
        for key in sorted(served(crate)):
            if key not in protos:
                res.violation(f"{label}: the crate serves {key[1]}, found in no proto/exchange/{key[0]}/v1/*.proto")
                continue
            path, names = protos[key]
            for name in names:
                rpcs[name] = path
        res.rpcs += len(rpcs)
        for name, path in rpcs.items():
            if name not in words:
                res.violation(f"{label}: does not name RPC `{name}` ({path.relative_to(repo)}) in code")
        for line, cell in table_rows(text, "RPC"):
            name = first_code(cell)
            if name and name not in rpcs:
                res.violation(f"{label}:{line}: lists RPC `{name}`, which the crate does not serve")
    n = res.violations
    res.lines.append(f"readmes: {res.services} services checked ({res.env_vars} env vars, {res.rpcs} RPCs), "
                     f"{n} violation{'' if n == 1 else 's'}")
    return res


# --------------------------------------------------------------------------- self-test

FAKE_PROTO = """syntax = "proto3";
package exchange.alpha.v1;
// rpc Commented(A) returns (B);  a comment is not an RPC
service AlphaService {
  // Does the thing.
  rpc DoThing(DoThingRequest) returns (DoThingResponse);
  rpc WatchThings(stream WatchRequest) returns (stream WatchResponse) {}
}
message DoThingRequest { string id = 1; }
"""
ALPHA_HELP = """Alpha: a fake service

Usage: alpha [OPTIONS]

Options:
      --grpc-addr <GRPC_ADDR>
          gRPC listen address [env: ALPHA_ADDR=] [default: 0.0.0.0:1]
      --secret <SECRET>
          A secret [env: ALPHA_SECRET]
      --long <LONG>
          A flag clap prints in its long layout

          [env: ALPHA_LONG=]
          [default: 5s]
  -h, --help
          Print help
"""
BETA_HELP = """Beta: a fake service with a job

Usage: beta [OPTIONS] [COMMAND]

Commands:
  job   Does a job, then exits
  help  Print this message or the help of the given subcommand(s)

Options:
      --http-addr <HTTP_ADDR>  HTTP listen address [env: BETA_HTTP_ADDR=] [default: 0.0.0.0:2]
  -h, --help                   Print help
"""
BETA_JOB_HELP = """Does a job, then exits

Usage: beta job [OPTIONS]

Options:
      --keep <KEEP>  How long to keep [env: BETA_JOB_KEEP=] [default: 30d]
"""
ALPHA_README = """# alpha

| variable | default | meaning |
|---|---|---|
| `ALPHA_ADDR` | `0.0.0.0:1` | gRPC listen address |
| `ALPHA_SECRET` | required | a secret |
| `ALPHA_LONG` | `5s` | a flag |

| RPC | what |
|---|---|
| `DoThing` | does the thing |
| `WatchThings` | watches |
"""
BETA_README = """# beta

| variable | default | meaning |
|---|---|---|
| `BETA_HTTP_ADDR` | `0.0.0.0:2` | HTTP listen address |

The job:

```sh
BETA_JOB_KEEP=7d beta job
```
"""


def fake_binary(path: Path, helps: dict[str, str]) -> None:
    cases = "".join(f"  {arg!r}) cat <<'EOF'\n{text}EOF\n  ;;\n" for arg, text in helps.items())
    path.write_text(f"#!/bin/sh\ncase \"$*\" in\n{cases}  *) echo \"unexpected: $*\" >&2; exit 2 ;;\nesac\n")
    path.chmod(0o755)


class FakeRepo:
    """Two fake services: alpha (serves a proto service) and beta (none; a subcommand)."""

    def __init__(self, base: Path, name: str):
        self.dir = base / name
        self.bin = base / f"{name}-bin"
        self.bin.mkdir(parents=True)
        fake_binary(self.bin / "alpha", {"--help": ALPHA_HELP})
        fake_binary(self.bin / "beta", {"--help": BETA_HELP, "job --help": BETA_JOB_HELP})
        self.write("proto/exchange/alpha/v1/alpha.proto", FAKE_PROTO)
        self.write("services/alpha/Cargo.toml", '[package]\nname = "alpha"\n\n[[bin]]\nname = "alpha"\npath = "src/main.rs"\n')
        self.write("services/alpha/src/lib.rs", "use exchange_proto::alpha::v1::alpha_service_server::AlphaServiceServer;\n")
        self.write("services/alpha/README.md", ALPHA_README)
        self.write("services/beta/Cargo.toml", '[package]\nname = "beta"\n')
        self.write("services/beta/src/lib.rs", "use exchange_proto::alpha::v1::alpha_service_client::AlphaServiceClient;\n")
        self.write("services/beta/README.md", BETA_README)

    def write(self, path: str, text: str) -> None:
        p = self.dir / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def edit(self, path: str, old: str, new: str) -> None:
        p = self.dir / path
        text = p.read_text()
        assert old in text, f"self-test bug: {old!r} not in {path}"
        p.write_text(text.replace(old, new))

    def check(self) -> Result:
        return check(self.dir, self.bin)


def without(text: str, name: str) -> str:
    """The text with every whole-word occurrence of `name` renamed away."""
    return re.sub(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", "RENAMED_AWAY", text)


def self_test(repo: Path, bin_dir: Path, verbose: bool = False) -> int:
    cases: list[tuple[str, bool, str]] = []
    base = Path(tempfile.mkdtemp(prefix="check-readmes-"))

    def expect(name: str, result: Result, violations: bool, *needles: str) -> None:
        text = "\n".join(result.lines)
        ok = (result.violations > 0) == violations and all(n in text for n in needles)
        cases.append((name, ok, text))

    try:
        r = FakeRepo(base, "a")
        expect("(a) READMEs naming every env var and RPC pass", r.check(), False,
               "2 services checked (5 env vars, 2 RPCs), 0 violations")

        r = FakeRepo(base, "b")
        r.edit("services/alpha/README.md", "| `ALPHA_LONG` | `5s` | a flag |\n", "")
        expect("(b) a README missing an env var (clap's long layout) fails", r.check(), True,
               "services/alpha/README.md: does not name `ALPHA_LONG` (listed by `alpha --help`)", "1 violation")

        r = FakeRepo(base, "c")
        r.edit("services/alpha/README.md", "`ALPHA_SECRET`", "ALPHA_SECRET")
        expect("(c) an env var with hidden values ([env: NAME]) named only outside code fails", r.check(), True,
               "does not name `ALPHA_SECRET`")

        r = FakeRepo(base, "d")
        r.edit("services/beta/README.md", "BETA_JOB_KEEP=7d beta job", "beta job")
        expect("(d) a README missing a subcommand's env var fails", r.check(), True,
               "services/beta/README.md: does not name `BETA_JOB_KEEP` (listed by `beta job --help`)")

        r = FakeRepo(base, "e")
        r.edit("services/alpha/README.md", "| `DoThing` | does the thing |\n", "")
        expect("(e) a README missing an RPC fails", r.check(), True,
               "services/alpha/README.md: does not name RPC `DoThing` (proto/exchange/alpha/v1/alpha.proto) in code",
               "1 violation")

        r = FakeRepo(base, "f")
        r.edit("services/alpha/README.md", "| `WatchThings` | watches |\n", "It WatchThings too.\n")
        expect("(f) an RPC named only in prose fails", r.check(), True, "does not name RPC `WatchThings`")

        r = FakeRepo(base, "g")
        r.edit("services/alpha/README.md", "| `DoThing` |", "| `DoThing` | x |\n| `Gone` | y |\n| `DoThing2` |")
        r.edit("services/alpha/README.md", "| `ALPHA_LONG` |", "| `ALPHA_GONE` | x | y |\n| `ALPHA_LONG` |")
        text = "\n".join(r.check().lines)
        cases.append(("(g) a table row naming a removed env var or RPC fails",
                      "lists `ALPHA_GONE`, which `alpha --help` does not" in text
                      and "lists RPC `Gone`, which the crate does not serve" in text, text))

        r = FakeRepo(base, "h")
        (r.dir / "services/beta/README.md").unlink()
        (r.bin / "alpha").unlink()
        text = "\n".join(r.check().lines)
        cases.append(("(h) a missing README or an unbuilt binary fails",
                      "services/beta/README.md: missing" in text and "alpha is not built" in text, text))

        r = FakeRepo(base, "i")
        r.write("proto/exchange/gamma/v1/gamma.proto", "service GammaService {\n  rpc Nobody(A) returns (B);\n}\n")
        expect("(i) a proto service no crate serves fails", r.check(), True,
               "proto/exchange/gamma/v1/gamma.proto: service GammaService is served by no crate")

        # The real READMEs, as temp copies: each env var and each RPC renamed away in
        # turn must fail, naming it (so no name passes only by being mentioned elsewhere).
        crates = sorted(p.parent for p in (repo / "services").glob("*/Cargo.toml"))
        missing = [c.name for c in crates if not (bin_dir / binary_name(c)).is_file()]
        if missing:
            cases.append((f"(j) the real READMEs: binaries {', '.join(missing)} not built in {bin_dir}", False,
                          "build first (cargo build --workspace --bins) or set BIN_DIR"))
        else:
            copy = base / "real"
            shutil.copytree(repo / "proto", copy / "proto")
            for c in crates:
                dest = copy / "services" / c.name
                shutil.copytree(c / "src", dest / "src")
                shutil.copy2(c / "Cargo.toml", dest / "Cargo.toml")
                if (c / "README.md").is_file():
                    shutil.copy2(c / "README.md", dest / "README.md")
            whole = check(copy, bin_dir)
            expect("(j) the real READMEs, copied, pass", whole, False, "0 violations")
            protos = proto_services(copy)
            tried, failed = 0, []
            for c in crates:
                readme = copy / "services" / c.name / "README.md"
                if not readme.is_file():
                    continue
                original = readme.read_text()
                names = [n for n, _ in env_vars(bin_dir / binary_name(c), Result(), "") or []]
                rpc_names = [n for key in sorted(served(c)) if key in protos for n in protos[key][1]]
                for kind, name in [("", n) for n in names] + [("RPC ", n) for n in rpc_names]:
                    readme.write_text(without(original, name))
                    result = check(copy, bin_dir, [c.name])
                    tried += 1
                    if f"does not name {kind}`{name}`" not in "\n".join(result.lines):
                        failed.append(f"{c.name}: {kind}{name}")
                readme.write_text(original)
            cases.append((f"(j) each of the {tried} env vars and RPCs, renamed away from a copy of its real README, fails",
                          tried > 0 and not failed, "not caught: " + ", ".join(failed)))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    failed_cases = [c for c in cases if not c[1]]
    for name, ok, detail in cases:
        if verbose or not ok:
            print(f"  {'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            print("       " + detail.replace("\n", "\n       "))
    if failed_cases:
        print(f"readmes self-test: {len(failed_cases)} of {len(cases)} cases FAILED")
        return 1
    print(f"readmes self-test: {len(cases)} cases passed")
    return 0


def default_bin_dir(repo: Path) -> Path:
    if os.environ.get("BIN_DIR"):
        return Path(os.environ["BIN_DIR"])
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else repo / "target") / "debug"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[2]
    ap.add_argument("--repo", type=Path, default=here, help="repository root (default: this checkout)")
    ap.add_argument("--bin-dir", type=Path, help="where the service binaries are (default: $BIN_DIR, "
                    "else ${CARGO_TARGET_DIR:-<repo>/target}/debug)")
    ap.add_argument("--verbose", action="store_true", help="list each case with --self-test")
    ap.add_argument("--self-test", action="store_true", help="prove the check on fake services and on copies of the real READMEs")
    args = ap.parse_args()
    bin_dir = args.bin_dir or default_bin_dir(args.repo)
    if args.self_test:
        return self_test(args.repo, bin_dir, args.verbose)
    result = check(args.repo, bin_dir)
    print("\n".join(result.lines))
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
