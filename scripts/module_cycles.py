#!/usr/bin/env python3
"""The import graph of a crate's modules and its cycles (exit 1 if there is one).

    scripts/module_cycles.py proxy/src [DEPTH] [--layers]    DEPTH 1: top-level modules (default)

Reads every `crate::`, `super::` and `self::` path in a module's files (comments and
`#[cfg(test)] mod tests` blocks aside), resolves it to a module `DEPTH` levels deep, and
reports each strongly connected component of more than one module with the edges that make
it. With --layers, the order of the `pub mod` lines in lib.rs is the order of the layers,
bottom first, and every import between top-level modules must point to an earlier one (a
module never uses one above it). scripts/test.sh runs it on both crates.
"""
import collections
import os
import re
import sys


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    return rel


def graph(root, depth):
    edges = collections.defaultdict(set)
    for d, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            p = os.path.join(d, f)
            m = module_of(root, p)
            if m in (["lib"], ["main"]) or (m and m[0] == "bin") or m[-1] == "tests":
                continue
            src = open(p, encoding="utf-8").read()
            src = src.split("#[cfg(test)]\nmod tests")[0]
            src = re.sub(r"//[^\n]*", "", src)
            src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
            me = "::".join(m[:depth])
            # A file's `super` is its parent module; `self` is itself.
            for t in re.finditer(r"\b(crate|super|self)((?:::\w+)+)", src):
                base = {"crate": [], "super": m[:-1], "self": m}[t.group(1)]
                parts = base + t.group(2).split("::")[1:]
                # Drop the last segment when it names an item rather than a module: only
                # modules that exist as files or folders count.
                mod = []
                for part in parts:
                    cand = mod + [part]
                    if os.path.isdir(os.path.join(root, *cand)) or os.path.isfile(os.path.join(root, *cand) + ".rs"):
                        mod = cand
                    else:
                        break
                target = "::".join(mod[:depth])
                if target and target != me and not me.startswith(target + "::") and not target.startswith(me + "::"):
                    edges[me].add(target)
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main():
    root = sys.argv[1]
    depth = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    edges = graph(root, depth)
    found = cycles(edges)
    if "-v" in sys.argv:
        for k in sorted(edges):
            print(f"{k} -> {', '.join(sorted(edges[k]))}")
    for comp in found:
        print("cycle:", " <-> ".join(comp))
        for a in comp:
            for b in sorted(edges.get(a, ())):
                if b in comp:
                    print(f"    {a} -> {b}")
    upward = []
    if "--layers" in sys.argv:
        lib = open(os.path.join(root, "lib.rs"), encoding="utf-8").read()
        order = re.findall(r"^pub mod (\w+);", lib, re.M)
        for a in sorted(edges):
            for b in sorted(edges[a]):
                ta, tb = a.split("::")[0], b.split("::")[0]
                if ta in order and tb in order and order.index(tb) > order.index(ta):
                    upward.append(f"{a} -> {b}")
        for e in upward:
            print("imports a layer above it (lib.rs order):", e)
    if not found and not upward:
        what = "no import cycle" + (", no import upward" if "--layers" in sys.argv else "")
        print(f"{root}: {what} between modules at depth {depth} ({len(edges)} modules with imports)")
    sys.exit(1 if found or upward else 0)


if __name__ == "__main__":
    main()
