"""`python -m latentcomm`: subcommands beside the three scripts (today: keygen)."""

from __future__ import annotations

import argparse
import sys

from latentcomm.cli.common import HelpFormatter, run

DESCRIPTION = """\
latentcomm tools.

  keygen PATH   write a new random 256-bit key (file mode 0600) for sealed frames and print its key id;
                give the same file to sender and receiver with --key PATH (docs/security.md)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m latentcomm", description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kg = sub.add_parser(
        "keygen",
        help="write a new key file for sealed frames",
        description="Write a new random 256-bit key to PATH (mode 0600; an existing file is never overwritten) "
        "and print its key id, which sealed frames carry in clear so a receiver with several keys picks the right "
        "one. Copy the file to the receiver over a channel you trust (scp, a secrets manager); never send it over "
        "the link it protects.",
        formatter_class=HelpFormatter,
    )
    kg.add_argument("path", metavar="PATH", help="where to write the key")
    kg.add_argument("--json", action="store_true", help="print {path, key_id} as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        import json

        from latentcomm.secure import generate_key

        key = generate_key(args.path)
        if args.json:
            print(json.dumps({"path": str(args.path), "key_id": key.key_id_hex}))
        else:
            print(f"wrote {args.path} (mode 0600); key id {key.key_id_hex}")
    return 0


def entry() -> None:
    sys.exit(run(main))
