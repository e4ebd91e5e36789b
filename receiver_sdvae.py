#!/usr/bin/env python3
"""Receive latents, decode them and show original and reconstruction. See --help and README.md."""

from latentcomm.cli.receiver import entry

if __name__ == "__main__":
    entry()
