"""When a failed task runs again: ``delay * 2**(attempt-1)``, at most an hour, within retries."""

from datetime import datetime, timedelta

MAX_BACKOFF_SECONDS = 3600.0


def retry_at(attempts: int, retries: int, delay_seconds: float, now: datetime) -> datetime | None:
    """After ``attempts`` failed attempts; None when no retry is left."""
    if attempts > retries:
        return None
    return now + timedelta(seconds=min(MAX_BACKOFF_SECONDS, delay_seconds * 2 ** (attempts - 1)))
