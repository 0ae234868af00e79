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


def guarded(work, user_errors=(), storage_status: int = 2, own_errors=None):
    """Run ``work()`` the way every job ends: ``(result, None)``, or ``(None, status)`` after
    one line on stderr: 2 for an input error (``user_errors``), ``storage_status`` for an
    object-storage problem (``storage_error``), and for an exception of a type in
    ``own_errors`` (a dict: type -> status) that status. Anything else propagates with its
    traceback."""
    import sys

    own_errors = own_errors or {}
    try:
        return work(), None
    except tuple(own_errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, next(status for kind, status in own_errors.items() if isinstance(exc, kind))
    except tuple(user_errors) as exc:
        if storage_error(exc):
            return None, storage_status
        print(f"error: {exc}", file=sys.stderr)
        return None, 2
    except Exception as exc:  # noqa: BLE001 - object storage problems are one line, anything else a traceback
        if storage_error(exc):
            return None, storage_status
        raise
