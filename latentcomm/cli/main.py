"""The `latentcomm` command (`pip install .`; also `python -m latentcomm`): every job in one place.

`send`, `receive` and `metrics` are exactly the three top-level scripts (same flags, same output);
`keygen` writes a key for sealed frames.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from latentcomm.cli.common import HelpFormatter, run

DESCRIPTION = """\
latentcomm: pictures across thin links.

commands:
  send      encode images and send them to a receiver        (= sender_sdvae.py; see: latentcomm send --help)
  receive   receive, decode, show and save images            (= receiver_sdvae.py)
  metrics   measure quality locally, then send the latent    (= sender_sdvae_metrics.py)
  keygen    write a new key file for sealed frames (--key)

examples:
  latentcomm receive --codec learned --dashboard 8080
  latentcomm send --codec learned --image photos/ --target-bytes 4000
  latentcomm keygen robot7.key
"""

SCRIPTS = {"send": "sender", "receive": "receiver", "metrics": "metrics_sender"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentcomm", description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SCRIPTS:
        sub.add_parser(name, help=f"see: latentcomm {name} --help", add_help=False)
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
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SCRIPTS:
        module = importlib.import_module(f"latentcomm.cli.{SCRIPTS[argv[0]]}")
        return module.main(argv[1:], prog=f"latentcomm {argv[0]}")
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        from latentcomm.wire.keys import generate_key

        key = generate_key(args.path)
        if args.json:
            print(json.dumps({"path": str(args.path), "key_id": key.key_id_hex}))
        else:
            print(f"wrote {args.path} (mode 0600); key id {key.key_id_hex}")
    return 0


def entry() -> None:
    sys.exit(run(main))
