"""A small HTTP server per process: ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/metrics``: the process's Prometheus registry (text exposition format).
- ``/healthz``: 200 while the process runs (the server thread answers).
- ``/readyz``: 200 when every readiness check passes, 503 otherwise; the body is JSON
  naming each check, e.g. ``{"ready": false, "checks": {"assigned": false, "redis": true}}``.

It runs in a daemon thread so it never keeps a stopping process alive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.settings import Settings

log = logging.getLogger(__name__)

#: Name -> callable answering True when that part of the process is ready. A check that
#: raises counts as not ready.
ReadinessChecks = Mapping[str, Callable[[], bool]]
#: Answers /healthz: (alive, what to add to the body). Without one, alive while it answers.
Liveness = Callable[[], tuple[bool, dict[str, object]]]


def run_checks(checks: ReadinessChecks) -> dict[str, bool]:
    """Run every check; one that raises is reported as not ready."""
    results: dict[str, bool] = {}
    for name, check in checks.items():
        try:
            results[name] = bool(check())
        except Exception as exc:
            log.debug("readiness check %s failed: %s", name, exc)
            results[name] = False
    return results


class MetricsServer:
    """Serves a registry and health endpoints on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        checks: ReadinessChecks,
        *,
        port: int = 0,
        host: str = "0.0.0.0",
        liveness: Liveness | None = None,
    ) -> None:
        self.registry = registry
        self.checks = checks
        self.liveness = liveness
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="streamseg-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful when constructed with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics and health endpoints on port %d (/metrics /healthz /readyz)", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_metrics_server(
    port: int,
    registry: CollectorRegistry,
    checks: ReadinessChecks,
    liveness: Liveness | None = None,
) -> MetricsServer | None:
    """Start the server on ``port``, or return None when ``port`` is 0 (metrics off).

    A port already in use is logged and the process runs without the server: several
    consumers on one host (tests, benchmarks) must not crash each other; set distinct
    ``--metrics-port`` values to scrape them all.
    """
    if not port:
        return None
    try:
        return MetricsServer(registry, checks, port=port, liveness=liveness).start()
    except OSError as exc:
        log.warning(
            "metrics and health endpoints off: cannot listen on port %d (%s); set "
            "--metrics-port or observability.metrics_port",
            port,
            exc,
        )
        return None


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                alive, said = (True, {}) if server.liveness is None else server.liveness()
                body = orjson.dumps({"alive": alive, **said})
                self._send(200 if alive else 503, body, "application/json")
            elif path == "/readyz":
                results = run_checks(server.checks)
                ready = all(results.values())
                body = orjson.dumps({"ready": ready, "checks": results})
                self._send(200 if ready else 503, body, "application/json")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds must not flood the log

    return Handler


def metrics_port(args: object, settings: Settings, *, default: int) -> int:
    """The port to serve on: ``--metrics-port``, else ``observability.metrics_port``, else the
    command's ``default`` (0 = no server)."""
    port: int | None = getattr(args, "metrics_port", None)
    if port is None:
        port = settings.observability.metrics_port
    return default if port is None else port
