"""The portal console: a small web console for each portal's HubSpot admins (docs/console.md).

Its own route group (an aiohttp sub-app, `app.py`) under `/console/`, on the webhook's port or
on CONSOLE_PORT: sign in with HubSpot or a console link (`signin.py`, `sessions.py`), the
portal's queues, one queue, the lookup of one execution (`pages.py`), pause and resume for
operators (`steering.py`). Server-rendered templates; one small script refreshes the figures.
"""
