"""Rewrites the generated blocks of the docs and workflows from the code's tables.

    venv/bin/python scripts/docgen.py           rewrite every block (then commit the files)
    venv/bin/python scripts/docgen.py --check   list the stale blocks, exit 1 if any

A block sits between `generated: <name>` and `end generated: <name>` lines (an HTML comment in
Markdown, a `#` comment in YAML). Sources: components/roles.py (the IAM roles) and
components/config_docs.py with components/config.py (the config keys). tests/test_docs.py runs
the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components import config, config_docs, roles  # noqa: E402

FILES = (
    "README.md",
    "docs/ci-cd.md",
    "docs/configuration.md",
    ".github/workflows/deploy.yml",
    ".github/workflows/preview.yml",
    ".github/workflows/e2e.yml",
    ".github/workflows/drift.yml",
)
BLOCK = re.compile(
    r"^(?P<head>(?P<indent>[ \t]*)(?P<lead><!--|#)(?P<pad>[ \t]*)generated: (?P<name>[\w-]+)\b[^\n]*\n)"
    r"(?P<body>.*?)"
    r"(?P<tail>^[ \t]*(?:<!--|#)[ \t]*end generated: (?P=name)\b[^\n]*$)",
    re.S | re.M,
)
MEMBERS = {
    "deploy": "serviceAccount:postal-deploy@<project>.iam.gserviceaccount.com",
    "preview": "serviceAccount:postal-preview@<project>.iam.gserviceaccount.com",
}
SCOPE_NOTE = {roles.KEY: "KMS key (with the KMS secrets provider)"}


def _default(key: str) -> str:
    doc = config_docs.KEY_DOCS[key]
    if key in config.DEFAULTS:
        value = config.DEFAULTS[key]
        return f"`{json.dumps(value) if isinstance(value, (bool, dict, list)) else value}`"
    return doc.default or "unset"


def config_table() -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in config.KEYS:
        doc = config_docs.KEY_DOCS.get(key)
        if doc is None:
            raise SystemExit(f"{key}: no entry in components/config_docs.py KEY_DOCS: add one (see its docstring)")
        rows.append(f"| `{key}` | {doc.type} | {_default(key)} | {doc.meaning} |")
    return rows


def roles_table(identity: str) -> list[str]:
    rows = ["| role | on | why |", "|---|---|---|"]
    for r in roles.IDENTITIES[identity]:
        rows.append(f"| `{r.role}` | {SCOPE_NOTE.get(r.scope, 'the ' + r.scope)} | {r.why} |")
    return rows


def roles_list(identity: str, width: int = 96) -> list[str]:
    """The roles in a few lines of prose, by where each is granted (the README; ci-cd.md has the why)."""
    by_scope: dict[str, list[str]] = {}
    for r in roles.IDENTITIES[identity]:
        by_scope.setdefault(r.scope, []).append(f"`{r.role}`")
    parts = [f"on the {SCOPE_NOTE.get(s, s)}: {', '.join(rs)}" for s, rs in by_scope.items()]
    words, lines, line = "; ".join(parts).split(" "), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line + "."]


def roles_comment(identity: str) -> list[str]:
    width = max(len(r.role) for r in roles.IDENTITIES[identity])
    return [f"{r.role:<{width}}  on the {SCOPE_NOTE.get(r.scope, r.scope)}" for r in roles.IDENTITIES[identity]]


def grant_commands() -> list[str]:
    lines = ["```"]
    for identity, member in MEMBERS.items():
        lines += roles.grant_commands(roles.IDENTITIES[identity], member)
    return lines + ["```"]


def render(name: str, yaml_comment: bool) -> list[str]:
    if name == "config-keys":
        return config_table()
    if name == "roles-grant":
        return grant_commands()
    identity = name.removeprefix("roles-").removesuffix("-list")
    if name.startswith("roles-") and identity in roles.IDENTITIES:
        if name.endswith("-list"):
            return roles_list(identity)
        return roles_comment(identity) if yaml_comment else roles_table(identity)
    raise SystemExit(f"unknown generated block {name!r}")


def regenerate(text: str) -> str:
    def replace(match: re.Match) -> str:
        comment = match["lead"] == "#"
        prefix = match["indent"] + (match["lead"] + match["pad"] if comment else "")
        body = "".join(f"{prefix}{line}".rstrip() + "\n" for line in render(match["name"], comment))
        return match["head"] + body + match["tail"]

    return BLOCK.sub(replace, text)


def stale(root: Path = ROOT) -> list[str]:
    """The files whose generated blocks differ from what the tables give."""
    return [name for name in FILES if regenerate((root / name).read_text()) != (root / name).read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list the files whose blocks are stale")
    args = parser.parse_args(argv)
    if args.check:
        for name in stale():
            print(f"{name}: generated block out of date: run venv/bin/python scripts/docgen.py")
        return 1 if stale() else 0
    for name in FILES:
        path = ROOT / name
        text = path.read_text()
        if regenerate(text) != text:
            path.write_text(regenerate(text))
            print(f"rewrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
