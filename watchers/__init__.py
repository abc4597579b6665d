"""Watching the spool: the doorbell, intake into the ledger, and reconcile."""
