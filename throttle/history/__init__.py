"""Execution history in PostgreSQL, one module per job: the pool (`pool`), the schema
(`migrations`), engine events into rows (`folding`) and rows into the table (`upsert`),
retention (`pruning`), queues rebuilt after Redis lost data (`recovery`), and what support reads
(`timeline`). No command-line code here: `throttle/cli/history_commands.py` drives these."""
