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


def storage_error(exc: BaseException) -> bool:
    """Print one line for an object-storage problem (no credentials, access denied, no such
    bucket, endpoint down: ``storage.explain``) and return True, so that the job exits
    with status 2 like other input errors; False when ``exc`` is something else."""
    import sys

    from .storage import explain

    message = explain(exc)
    if message is None:
        return False
    print(f"error: {message}", file=sys.stderr)
    return True
