"""Evaluation of lip-sync output (SyncNet LSE-D / LSE-C, ...)."""
