"""Shared bits of the job entry points in ``jobs/``."""

from __future__ import annotations

import argparse


def doc_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows a job's module docstring: the first
    paragraph as the description, the rest (examples, semantics) as the epilog."""
    head, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(
        prog=prog, description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
