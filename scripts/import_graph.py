#!/usr/bin/env python3
"""Import circles and upward imports between the modules of omuda-core,
read from the `use` lines (`crate::…`, `super::…`; tests excluded).

    python3 scripts/import_graph.py [omuda-core/src]

Prints the strongly connected groups of modules (circles) and every import
from a lower folder into a higher one (order: leaves, ops, nn, data, eval,
train). Exits 1 when there is either.
"""
import os
import re
import sys

ORDER = {"ops": 1, "nn": 2, "data": 3, "eval": 4, "train": 5}


def modules(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".rs"):
                p = os.path.relpath(os.path.join(d, f), root)
                out[p[:-3].replace("/mod", "").replace(os.sep, "::")] = os.path.join(d, f)
    return out


def edges(root):
    mods = modules(root)

    def known(path):
        parts = path.split("::")
        for i in range(len(parts), 0, -1):
            c = "::".join(parts[:i])
            if c in mods:
                return c
        return None

    e = set()
    for mod, path in mods.items():
        text = open(path).read()
        text = text[: text.find("#[cfg(test)]")] if "#[cfg(test)]" in text else text
        text = re.sub(r"//.*", "", text)
        parent = "::".join(mod.split("::")[:-1])
        targets = re.findall(r"crate::((?:[a-z_0-9]+::)*[a-z_0-9]+)", text)
        targets += [(parent + "::" if parent else "") + m for m in re.findall(r"\bsuper::([a-z_0-9]+)", text)]
        for t in targets:
            k = known(t)
            if k and k != mod and not mod.startswith(k + "::"):
                e.add((mod, k))
    return e


def circles(e):
    g = {}
    for a, b in e:
        g.setdefault(a, set()).add(b)
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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

    for v in list(g):
        if v not in index:
            visit(v)
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "omuda-core/src"
    e = edges(root)
    top = lambda m: ORDER.get(m.split("::")[0], 0)
    up = sorted((a, b) for a, b in e if top(a) < top(b))
    cs = circles(e)
    print(f"{len(e)} imports between modules")
    print(f"circles: {cs if cs else 'none'}")
    print(f"upward imports: {up if up else 'none'}")
    sys.exit(1 if cs or up else 0)


if __name__ == "__main__":
    main()
