"""The ledger (SQLite, or PostgreSQL): one row per stored instance, every move an event."""
