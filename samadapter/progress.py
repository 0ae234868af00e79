"""Progress where a person waits: a bar on a terminal (tqdm), a log line every ``every``
items (or ``seconds``) anywhere else, with items done / total, rate and time left."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
log = logging.getLogger("samadapter.progress")


def progress(items: Iterable[T], total: Optional[int], desc: str, unit: str = "item", enabled: bool = True,
             every: int = 500, seconds: float = 30.0) -> Iterator[T]:
    """``items``, passed through, with progress reported: tqdm when stderr is a terminal,
    else one log line at most every ``every`` items or ``seconds`` (and at the end)."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit)
        return
    t0 = last = time.monotonic()
    done = reported = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if done - reported >= every or now - last >= seconds:
            log.info("%s", line(desc, done, total, now - t0, unit))
            reported, last = done, now
    if done != reported:
        log.info("%s", line(desc, done, total, time.monotonic() - t0, unit))


def line(desc: str, done: int, total: Optional[int], elapsed: float, unit: str = "item") -> str:
    """``prepare: 500/2,000 (25%), 40.1 img/s, 37 s left``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        left = f", {(total - done) / rate:.0f} s left" if rate > 0 and done < total else ""
        return f"{desc}: {done:,}/{total:,} ({100 * done / total:.0f}%), {rate:.1f} {unit}/s{left}"
    return f"{desc}: {done:,}, {rate:.1f} {unit}/s"
