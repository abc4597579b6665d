"""Cleaning up: deleting files the ledger says are done with, and recording each deletion."""
