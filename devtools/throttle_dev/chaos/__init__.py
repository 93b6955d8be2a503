"""The fault suite: simulator traffic through real processes while one thing breaks at a time.

`make chaos` runs every fault (`python -m throttle_dev.chaos`), prints the fault table and writes it
into docs/reliability.md; tests/e2e/test_faults.py runs the same scenarios under pytest (the fast
ones inside `make test`). Each scenario starts traffic for its own portal and policy on a shared
`Stack`, breaks one component mid-traffic, repairs it, waits until every blocked execution is
settled, and judges the run from the simulator's report (HubSpot's view), the execution history in
PostgreSQL (failures and their reasons) and the completion instants (the rate).
"""
