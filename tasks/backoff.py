"""When a failed task runs again: ``delay * 2**(attempt-1)``, at most an hour, within retries;
no sooner than a destination asked (``Retry-After``), up to the same hour."""

from datetime import datetime, timedelta

MAX_BACKOFF_SECONDS = 3600.0


def retry_at(
    attempts: int,
    retries: int,
    delay_seconds: float,
    now: datetime,
    asked_seconds: float | None = None,
) -> datetime | None:
    """After ``attempts`` failed attempts; None when no retry is left.

    ``asked_seconds``: the destination asked to be left alone this long
    (HTTP ``Retry-After``): not before then, unless that is over an hour.
    """
    if attempts > retries:
        return None
    seconds = min(MAX_BACKOFF_SECONDS, delay_seconds * 2 ** (attempts - 1))
    if asked_seconds is not None:
        seconds = max(seconds, min(asked_seconds, MAX_BACKOFF_SECONDS))
    return now + timedelta(seconds=seconds)
