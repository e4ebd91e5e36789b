"""docs/usage.md's flag tables, written from the commands' own parsers, so the reference can't miss a
flag or drift from ``--help``.

    python -m latentcomm.cli.flagdoc            # rewrite the tables in docs/usage.md
    python -m latentcomm.cli.flagdoc --check    # change nothing; exit 1 naming the stale tables

Each table sits between ``<!-- flags:NAME -->`` and ``<!-- /flags:NAME -->`` markers; NAME is a key of
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
USAGE = REPO / "docs" / "usage.md"
BLOCK = re.compile(r"(<!-- flags:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /flags:(?P=name) -->)", re.S)


def _sender() -> argparse.ArgumentParser:
    from latentcomm.cli.sender import build_parser

    return build_parser()


def _receiver() -> argparse.ArgumentParser:
    from latentcomm.cli.receiver import build_parser

    return build_parser()


def _metrics() -> argparse.ArgumentParser:
    from latentcomm.cli.metrics_sender import build_parser

    return build_parser()


def _keygen() -> argparse.ArgumentParser:
    from latentcomm.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["keygen"]


def _throttle() -> argparse.ArgumentParser:
    from latentcomm.transports.throttle import build_parser

    return build_parser()


def _training(objective: str) -> Callable[[], argparse.ArgumentParser]:
    def make() -> argparse.ArgumentParser:
        from latentcomm.training import OBJECTIVES, objective_class
        from latentcomm.training.loop import parser

        return parser(objective_class(objective), OBJECTIVES)

    return make


#: name -> (how the command is run, its parser).
COMMANDS: dict[str, tuple[str, Callable[[], argparse.ArgumentParser]]] = {
    "send": ("`sender_sdvae.py` (`latentcomm send`)", _sender),
    "receive": ("`receiver_sdvae.py` (`latentcomm receive`)", _receiver),
    "metrics": ("`sender_sdvae_metrics.py` (`latentcomm metrics`)", _metrics),
    "keygen": ("`latentcomm keygen PATH` (`python -m latentcomm keygen PATH`)", _keygen),
    "throttle": ("`python -m latentcomm.transports.throttle`", _throttle),
    **{
        f"train.{name}": (f"`python -m latentcomm.training --objective {name}`", _training(name))
        for name in ("reconstruction", "codec", "context", "decoder", "postnet", "enhance")
    },
}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    if action.nargs == 0:
        return " / ".join(f"`{o}`" for o in action.option_strings)
    if action.metavar is not None:
        value = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices is not None:
        value = "|".join(str(c) for c in action.choices)
    else:
        value = action.dest.upper()
    if action.nargs == "?":
        value = f"[{value}]"
    return ", ".join(f"`{o} {value}`".replace("|", "\\|") for o in action.option_strings)


def _default(action: argparse.Action) -> str:
    d = action.default
    if d is None or d is argparse.SUPPRESS or d is False or d == [] or action.nargs == 0:
        return ""
    text = str(d)
    # Paths inside the checkout (or beside it, ../shared) as a reader's checkout has them, not this one's.
    for root, shown in ((REPO, ""), (REPO.parent, "../")):
        if text.startswith(str(root) + os.sep):
            text = shown + text[len(str(root)) + 1 :]
            break
    return f"`{text}`"


def table(name: str) -> str:
    """The markdown table of command ``name``'s flags, in the parser's order."""
    how, make = COMMANDS[name]
    p = make()
    rows = [f"{how}, from its parser (`--help` says the same):\n", "| flag | default | what it does |", "|---|---|---|"]
    for action in p._actions:
        if isinstance(action, argparse._HelpAction) or action.help is argparse.SUPPRESS:
            continue
        help_text = action.help or ""
        if "%" in help_text:  # argparse's own placeholders, without its "(default: ...)" (a column here)
            help_text = help_text % {**vars(action), "prog": p.prog}
        rows.append(f"| {_flag(action)} | {_default(action)} | {_cell(help_text)} |")
    return "\n".join(rows) + "\n"


def flags(name: str) -> set[str]:
    """Every option string of command ``name`` (what a test checks the document against)."""
    return {o for a in COMMANDS[name][1]()._actions for o in a.option_strings}


def render(text: str) -> tuple[str, list[str]]:
    """The document with every flag table rewritten, and the names of those that changed."""
    changed: list[str] = []

    def sub(m: re.Match) -> str:
        if m["name"] not in COMMANDS:
            raise SystemExit(f"error: unknown flag table '{m['name']}'")
        body = table(m["name"])
        if body != m["body"]:
            changed.append(m["name"])
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(sub, text), changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latentcomm.cli.flagdoc", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming the stale tables")
    p.add_argument("doc", nargs="?", type=Path, default=USAGE, help="the document (default: docs/usage.md)")
    args = p.parse_args(argv)
    text = args.doc.read_text()
    new, changed = render(text)
    missing = [n for n in COMMANDS if f"<!-- flags:{n} -->" not in text]
    if args.check:
        if changed or missing:
            print(f"stale flag tables in {args.doc}: {', '.join(changed + missing)} (run python -m "
                  "latentcomm.cli.flagdoc)", file=sys.stderr)  # fmt: skip
            return 1
        print("every flag table matches the parsers")
        return 0
    if missing:
        print(f"error: {args.doc} has no table for {', '.join(missing)}", file=sys.stderr)
        return 1
    args.doc.write_text(new)
    print(("rewrote " + ", ".join(changed)) if changed else "every flag table matches the parsers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
