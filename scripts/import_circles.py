#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a circle.

Reads the `crate::` and `super::` paths of every non-test source file,
reduces each to an edge between two sibling modules (under their common
parent), and reports every strongly connected component of more than one
module. A text check, like grep: a path in a string literal could add an
edge, so a reported circle is a place to look first.

Usage: scripts/import_circles.py CRATE_DIR...   (exit 1 on a circle)
"""

import collections
import os
import re
import sys

TEST_PARTS = {"tests", "testkit", "testing"}
CRATE_REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)")
SUPER_REF = re.compile(r"\b((?:super::)+)([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)?")


def module_path(root, path):
    """`src/a/b.rs` and `src/a/b/mod.rs` are both module `a::b`."""
    parts = os.path.relpath(path, root)[:-3].split("/")
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return parts


def code_of(text):
    """The text without line comments and without an inline test module."""
    text = re.sub(r"//[^\n]*", "", text)
    cut = text.find("#[cfg(test)]\nmod tests {")
    return text if cut < 0 else text[:cut]


def edges_of(crate):
    """Sibling-to-sibling edges of one crate, and its module count."""
    root = os.path.join(crate, "src")
    edges, modules = set(), 0
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs") or name == "tests.rs":
                continue
            here = module_path(root, os.path.join(folder, name))
            if TEST_PARTS.intersection(here):
                continue
            modules += 1
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                text = code_of(f.read())
            refs = [m.group(1).split("::") for m in CRATE_REF.finditer(text)]
            for m in SUPER_REF.finditer(text):
                up = m.group(1).count("super::")
                rest = m.group(2).split("::") if m.group(2) else []
                refs.append(here[: len(here) - up] + rest)
            for there in refs:
                common = 0
                while (
                    common < len(here)
                    and common < len(there)
                    and here[common] == there[common]
                ):
                    common += 1
                if common < len(here) and common < len(there):
                    edges.add((tuple(here[: common + 1]), tuple(there[: common + 1])))
    return edges, modules


def circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    graph = collections.defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main(crates):
    bad = False
    for crate in crates:
        edges, modules = edges_of(crate)
        found = circles(edges)
        for component in found:
            bad = True
            names = " <-> ".join("::".join(m) for m in component)
            print(f"{crate}: import circle: {names}")
        print(f"{crate}: {modules} modules, {len(edges)} edges, {len(found)} circles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
