"""Counted nouns for the sentences the ledger, the log and the CLI write."""


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``: an admin reads these in event reasons and CLI lines."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
