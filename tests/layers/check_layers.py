#!/usr/bin/env python3
"""check_layers.py: the source tree's layering, checked (a CTest test).

Each directory of src/ is a layer; a file may include headers of its own directory and of the
layers below it, never above, and there is no include cycle between files. Each C library's
header is included only by the directory that wraps it. Exits 1 naming every breach."""

import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SRC = os.path.join(ROOT, "src")

# Lowest first. A directory may use itself and any directory listed before it, except where
# ALLOWED narrows it. store/open is open_store.{h,cpp}: the one place that knows both backends.
LAYERS = ["base", "store", "store/sqlite", "store/pg", "store/open", "metrics", "security",
          "http", "api", "tools", "server"]
# What each layer may include (beyond itself): the backends know nothing of each other, and
# nothing above store/open names a backend except the tools that work on SQLite files.
ALLOWED = {
    "base": [],
    "store": ["base"],
    "store/sqlite": ["base", "store"],
    "store/pg": ["base", "store"],
    "store/open": ["base", "store", "store/sqlite", "store/pg"],
    "metrics": ["base", "store"],
    "security": ["base", "store"],
    "http": ["base", "store", "security"],
    "api": ["base", "store", "metrics", "security", "http"],
    "tools": ["base", "store", "store/sqlite", "store/open", "security"],
    "server": ["base", "store", "store/open", "metrics", "security", "http", "api", "tools"],
}
# C library headers and the one directory that wraps each.
LIBRARIES = {
    "sqlite3.h": "store/sqlite",
    "libpq-fe.h": "store/pg",
    "cjson/cJSON.h": "base",
    "openssl/": "base",
    "systemd/": "base",
    "fcgiapp.h": "server",
    "fcgio.h": "server",
}


def layer_of(rel):
    if rel in ("store/open_store.h", "store/open_store.cpp"):
        return "store/open"
    d = os.path.dirname(rel)
    return d


def main():
    problems = []
    includes = {}
    for dirpath, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith((".h", ".cpp")):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), SRC)
            text = open(os.path.join(dirpath, f), encoding="utf-8").read()
            includes[rel] = re.findall(r'#include "([^"]+)"', text)
            layer = layer_of(rel)
            if layer not in ALLOWED:
                problems.append(f"{rel}: directory {layer!r} is not a known layer")
                continue
            for lib in re.findall(r"#include <([^>]+)>", text):
                for prefix, owner in LIBRARIES.items():
                    if lib.startswith(prefix) and layer != owner:
                        problems.append(f"{rel}: includes <{lib}>, which only {owner}/ wraps")
            for inc in includes[rel]:
                if not os.path.exists(os.path.join(SRC, inc)):
                    problems.append(f"{rel}: includes {inc!r}, not a path under src/")
                    continue
                to = layer_of(inc)
                if to != layer and to not in ALLOWED[layer]:
                    problems.append(f"{rel}: {layer}/ includes {inc} ({to}/), not below it")
    # Include cycles between files (depth-first search).
    state = {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in includes.get(node, []):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                problems.append("include cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt in includes and not state.get(nxt):
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(includes):
        if not state.get(node):
            visit(node, [])
    # A .cpp and its own header are one unit: a header including its .cpp's dependents is the
    # cycle that matters; file-level cycles above catch it.
    for p in problems:
        print(p)
    print(f"{len(includes)} files in {len(ALLOWED)} layers: "
          f"{'ok' if not problems else str(len(problems)) + ' problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
