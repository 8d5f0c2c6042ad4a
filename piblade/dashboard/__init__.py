"""The web dashboard: node cards, queues, recent jobs and history charts, live over SSE.

Modules, each small and with one concern:

* :mod:`~piblade.dashboard.snapshot` — what is shown, read from Redis (via ``clusterstatus.gather``)
* :mod:`~piblade.dashboard.auth` — token (watched on disk), sessions, rate limit (pure)
* :mod:`~piblade.dashboard.guard` — the ASGI middleware that enforces auth and security headers
* :mod:`~piblade.dashboard.views` / :mod:`~piblade.dashboard.api` — HTML routes / JSON, metrics, SSE
* :mod:`~piblade.dashboard.sse` — one poller shared by every open page
* :mod:`~piblade.dashboard.metrics` — Prometheus text (pure)
* :mod:`~piblade.dashboard.app` — assembly; :mod:`~piblade.dashboard.server` — uvicorn
* :mod:`~piblade.dashboard.publish` — the listeners and the ngrok tunnel's lifecycle (the CLI only renders)

Templates and static files (``templates/``, ``static/``) ship inside the package:
the page loads nothing from the internet.
"""
