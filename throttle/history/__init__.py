"""Execution history in PostgreSQL: the pool and migrations, folding events into rows, pruning,
recovery, and the timeline of one execution."""
