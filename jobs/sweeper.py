"""The app's lease sweeper: a job whose worker died goes back to the queue (or fails, after too many
expiries) within `interval` seconds of its lease running out, even when no worker is claiming
(claims sweep too: `queue.claim_next` calls `queue.requeue_expired` first)."""
from __future__ import annotations

import logging
import threading

from common import settings

__all__ = ["LeaseSweeper"]

logger = logging.getLogger(__name__)


class LeaseSweeper(threading.Thread):
    """Calls `queue.requeue_expired` every `interval` seconds (default a quarter of the lease) until stopped."""

    def __init__(self, interval: float | None = None):
        super().__init__(name="pruneboard-lease-sweeper", daemon=True)
        self.interval = interval if interval is not None else max(settings.lease_seconds() / 4, 1.0)
        self._stop_event = threading.Event()

    def run(self) -> None:
        from jobs.queue import requeue_expired

        while not self._stop_event.wait(self.interval):
            try:
                requeue_expired()
            except Exception:  # a database hiccup must not end the sweeps; the next one retries
                logger.warning("lease sweep failed", exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=10)
