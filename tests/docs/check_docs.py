#!/usr/bin/env python3
"""check_docs.py: the user documentation holds together. README.md stays a front door (at most
250 lines); every relative link in README.md and docs/*.md leads to a file that exists (and,
with a #fragment into a Markdown file, to a heading of it); no user document names an issue or
pull request number ("issue 12", "#12"): they say what the software does, not its history.
Exit 0 when all holds, 1 with every problem listed."""
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
README_MAX_LINES = 250

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ISSUE = re.compile(r"\b(?:issue|issues|pull request|PR)\s+#?\d+\b|(?<![\w&/#])#\d+\b", re.I)
FENCE = re.compile(r"^\s*```")


def user_docs(root):
    docs = [os.path.join(root, "README.md")]
    docs_dir = os.path.join(root, "docs")
    for name in sorted(os.listdir(docs_dir)):
        if name.endswith(".md"):
            docs.append(os.path.join(docs_dir, name))
    return docs


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    found, seen, fenced = set(), {}, False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if FENCE.match(line):
                fenced = not fenced
            if fenced or not line.startswith("#"):
                continue
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else "%s-%d" % (base, n))
    return found


def problems(root):
    out = []
    readme = os.path.join(root, "README.md")
    with open(readme, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) > README_MAX_LINES:
        out.append("README.md: %d lines, more than %d: move the detail to docs/"
                   % (len(lines), README_MAX_LINES))
    for doc in user_docs(root):
        rel = os.path.relpath(doc, root)
        with open(doc, encoding="utf-8") as f:
            text = f.read()
        for number, line in enumerate(text.splitlines(), 1):
            for m in ISSUE.finditer(line):
                out.append("%s:%d: names an issue number (%r): say what the software does"
                           % (rel, number, m.group(0)))
            for m in LINK.finditer(line):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                    continue  # http:, https:, mailto:
                path, _, fragment = target.partition("#")
                dest = doc if not path else os.path.normpath(
                    os.path.join(os.path.dirname(doc), path))
                if not os.path.exists(dest):
                    out.append("%s:%d: link to %s: no such file" % (rel, number, target))
                elif fragment and dest.endswith(".md") and fragment not in anchors(dest):
                    out.append("%s:%d: link to %s: no such heading in %s"
                               % (rel, number, target, os.path.relpath(dest, root)))
    return out


def main(argv):
    root = os.path.abspath(argv[1]) if len(argv) > 1 else ROOT
    found = problems(root)
    for p in found:
        print(p)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
