"""The SQLite ledger: one row per stored instance, every move an event."""
