"""`python -m latentcomm COMMAND`: see latentcomm/cli/main.py."""

from latentcomm.cli.main import entry

entry()
