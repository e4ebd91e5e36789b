#!/usr/bin/env python3
"""Print PSNR/SSIM of an image's reconstruction, then send its latent. See --help and README.md."""

from latentcomm.cli.metrics_sender import entry

if __name__ == "__main__":
    entry()
