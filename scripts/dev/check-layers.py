#!/usr/bin/env python3
"""Checks that a crate's modules import only downward: no import cycle between modules, and no
module that imports a room (top-level folder) above its own. Run by `scripts/mec lint`.

    python3 scripts/dev/check-layers.py            # every crate below
    python3 scripts/dev/check-layers.py pg_mec     # one

A module is a file (`src/ops/metering.rs` is `ops::metering`, `src/ops/mod.rs` is `ops`); it
imports another when it names it as `crate::…` (in a `use`, a path or a `use crate::{…}` group) or
as `super::…`. Comments are not read. Prints every cycle and every upward import, exit 1 if any.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Per crate: its src folder and its rooms from the top down. A module of a room may import modules
# of its own room and of every room below it; the crate root (lib.rs) may import anything.
CRATES = {
    "pg_mec": ("pg_mec/src", ["api", "ops", "events", "counters", "ledger", "cache", "pg"]),
    "mec_gateway": ("gateway/src", ["routes", "jobs", "sql", "plan", "request", "db", "infra", "error"]),
}


def module_of(src: Path, file: Path) -> tuple[str, ...]:
    rel = file.relative_to(src).with_suffix("")
    parts = rel.parts
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def expand_groups(text: str) -> list[str]:
    """`use crate::{a, b::{c, d}}` -> ["a", "b::c", "b::d"]; plain `crate::a::b` paths too."""
    paths: list[str] = []

    def walk(prefix: str, body: str) -> None:
        depth, start = 0, 0
        items = []
        for i, ch in enumerate(body):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(body[start:i])
                start = i + 1
        items.append(body[start:])
        for item in (x.strip() for x in items):
            if not item:
                continue
            m = re.match(r"^([\w:]*?)::\{(.*)\}$", item, re.S)
            if m:
                walk(f"{prefix}{m.group(1)}::", m.group(2))
            elif item.startswith("{") and item.endswith("}"):
                walk(prefix, item[1:-1])
            else:
                paths.append(prefix + item.split(" as ")[0].strip())

    for m in re.finditer(r"\bcrate::\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}", text):
        walk("", m.group(1))
    for m in re.finditer(r"\bcrate::((?:\w+::)*\w+)", text):
        paths.append(m.group(1))
    return paths


def resolve(path: str, modules: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    parts = tuple(p for p in path.split("::") if p and p != "self")
    for n in range(len(parts), 0, -1):
        if parts[:n] in modules:
            return parts[:n]
    return None


def check(name: str, src_dir: str, rooms: list[str]) -> list[str]:
    src = ROOT / src_dir
    files = sorted(src.rglob("*.rs"))
    if not files:
        return [f"{name}: no sources under {src_dir}"]
    modules = {module_of(src, f): f for f in files}
    known = set(modules)
    edges: dict[tuple[str, ...], set[tuple[str, ...]]] = {m: set() for m in modules}
    for mod, file in modules.items():
        text = strip_comments(file.read_text())
        paths = expand_groups(text)
        # super:: names the parent module (of a file that is not a mod.rs, the folder's module).
        parent = mod[:-1]
        for m in re.finditer(r"\bsuper::((?:\w+::)*\w+)", text):
            paths.append("::".join(parent + (m.group(1),)))
        for p in paths:
            target = resolve(p, known)
            if target is not None and target != mod and target != ():
                edges[mod].add(target)

    problems: list[str] = []
    rank = {room: i for i, room in enumerate(rooms)}
    for mod, targets in sorted(edges.items()):
        if not mod:
            continue
        room = mod[0]
        if room not in rank:
            problems.append(f"{name}: module {'::'.join(mod)} is in no room (rooms: {', '.join(rooms)})")
            continue
        for t in sorted(targets):
            if t[0] in rank and rank[t[0]] < rank[room]:
                problems.append(f"{name}: {'::'.join(mod)} imports {'::'.join(t)}, a room above its own")

    # Cycles: strongly connected components of more than one module (Tarjan).
    index: dict = {}
    low: dict = {}
    stack: list = []
    on: set = set()
    counter = [0]
    sccs: list[list] = []

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    for comp in sccs:
        problems.append(f"{name}: import cycle between {', '.join('::'.join(m) for m in comp)}")
    return problems


def main(argv: list[str]) -> int:
    names = argv or list(CRATES)
    problems = []
    for n in names:
        if n not in CRATES:
            print(f"unknown crate {n} (known: {', '.join(CRATES)})", file=sys.stderr)
            return 2
        problems += check(n, *CRATES[n])
    for p in problems:
        print(p)
    if not problems:
        print(f"layers: {', '.join(names)}: modules import only downward, no cycles")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
