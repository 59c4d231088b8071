"""Retrying a call while a shared service is away, with backoff, for a bounded time.

Light on purpose (no Optuna, no Ray): trial workers import it at start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def retrying(call: Callable[..., Any], *args: Any, retry_if: Callable[[BaseException], bool],
             patience_s: float, what: str, first_delay: float = 1.0, max_delay: float = 10.0,
             **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, retried with doubling delays (``first_delay`` up to
    ``max_delay``) while it raises an error ``retry_if`` accepts, for up to ``patience_s``;
    any other error, or the last one when patience runs out, is raised."""
    deadline, delay = time.monotonic() + patience_s, first_delay
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as error:
            if not retry_if(error) or time.monotonic() + delay > deadline:
                raise
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            log.warning("%s unreachable (%s); retrying in %.1f s", what, reason, delay)
            time.sleep(delay)
            delay = min(2 * delay, max_delay)


def patiently(call: Callable[..., Any], *args: Any, patience_s: float = 180.0,
              what: str = "storage", **kwargs: Any) -> Any:
    """``call`` retried while it fails with ``OSError`` (Ray Tune's storage unreachable: an S3
    endpoint that stops answering fails each call within seconds), for up to ``patience_s``."""
    return retrying(call, *args, retry_if=lambda error: isinstance(error, OSError),
                    patience_s=patience_s, what=what, **kwargs)
