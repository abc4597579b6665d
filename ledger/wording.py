"""Counted nouns for the sentences the ledger, the log and the CLI write."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 file``, ``2 files`` (``nouns`` for the irregular: ``2 studies``).

    An admin reads these in event reasons and CLI lines.
    """
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"
