"""Telling someone that a night did not succeed: an SNS topic or a webhook.

A target is an SNS topic ARN (``arn:aws:sns:<region>:<account>:<topic>``; published with
the node's or pod's own AWS identity, the region taken from the ARN) or an ``https://``
(or ``http://``) URL that receives a JSON POST: ``{"text": ..., "night": ..., "status":
..., ...}`` (``text`` is what Slack and most chat webhooks show). Nothing is sent when no
target is configured; a target that does not take the message costs one warning line and
never changes the night's exit status.
"""

from __future__ import annotations

import json
import socket
from typing import Optional

SNS_PREFIX = "arn:aws:sns:"


def check_target(target: str) -> None:
    """A ValueError naming what a target must look like."""
    if target.startswith(SNS_PREFIX):
        if len(target.split(":")) != 6:
            raise ValueError(f"--notify {target!r}: an SNS topic ARN is arn:aws:sns:<region>:<account>:<topic>")
        return
    if not target.startswith(("https://", "http://")):
        raise ValueError(f"--notify {target!r}: give an SNS topic ARN (arn:aws:sns:...) or a webhook URL (https://...)")


def message(night: str, prefix: str, code: int, meaning: str, detail: str) -> dict:
    host = socket.gethostname()
    return {
        "text": f"samadapter nightly {prefix} {night}: exit {code} ({meaning}){': ' + detail if detail else ''} [{host}]",
        "night": night, "prefix": prefix, "status": code, "meaning": meaning, "detail": detail, "host": host,
    }


def send(target: str, night: str, prefix: str, code: int, meaning: str, detail: str, out=None,
         timeout_s: float = 20.0) -> Optional[str]:
    """Send the night's outcome; returns the error line on failure (also printed), else None."""
    body = message(night, prefix, code, meaning, detail)
    try:
        if target.startswith(SNS_PREFIX):
            import botocore.session

            region = target.split(":")[3]
            sns = botocore.session.get_session().create_client("sns", region_name=region)
            sns.publish(TopicArn=target, Subject=f"samadapter nightly {night}: exit {code}"[:100],
                        Message=json.dumps(body, indent=1))
        else:
            import urllib.request

            request = urllib.request.Request(target, data=json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - the operator's URL
                response.read()
    except Exception as exc:  # noqa: BLE001 - a notification never changes the night's status
        line = f"warning: could not notify {_redacted(target)}: {type(exc).__name__}: {exc}"
        if out is not None:
            print(line, file=out, flush=True)
        return line
    if out is not None:
        print(f"notified {_redacted(target)}", file=out, flush=True)
    return None


def _redacted(target: str) -> str:
    """A webhook URL's path is often its secret: print the host only."""
    if target.startswith(SNS_PREFIX):
        return target
    from urllib.parse import urlsplit

    parts = urlsplit(target)
    return f"{parts.scheme}://{parts.netloc}/..."
