#!/usr/bin/env python3
"""Encode an image to a latent and send it to receiver_sdvae.py. See --help and README.md."""

from latentcomm.cli.sender import entry

if __name__ == "__main__":
    entry()
