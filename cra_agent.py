#!/usr/bin/env python3
"""Runs the agent from a checkout or a bare copy of it: python3 cra_agent.py -c FILE."""
import sys

from cra.cli import main

if __name__ == "__main__":
    sys.exit(main())
