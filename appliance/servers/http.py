"""The HTTP listener: a waitress server around the Flask app, in a thread.

Controller in the aiosmtpd style: ``HttpServer(app, host, port)`` does no
I/O; :meth:`start` binds (port 0 picks a free port, readable as ``.port``
afterwards) and serves from a daemon thread; :meth:`stop` closes the listener
and every open connection from inside the server's own loop, then joins.
waitress turns an exception in one request into a 500 for that request only;
the server keeps serving.  The client address the app sees is the socket's
peer: no proxy headers are trusted (``trusted_proxy`` is never set), which
matters because :meth:`appliance.store.Store.mac_for_ip` attributes downloads
by it.
"""

from __future__ import annotations

import logging
import threading

import waitress
from waitress import wasyncore

log = logging.getLogger("plowshare.http")

THREADS = 8
STOP_TIMEOUT = 5.0


class HttpServer:
    def __init__(self, app, host: str, port: int, threads: int = THREADS):
        self.app = app
        self.host = host
        self.port = port
        self.threads = threads
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HTTP server already started")
        server = waitress.create_server(self.app, host=self.host, port=self.port,
                                        threads=self.threads, ident="plowshare")
        if not hasattr(server, "effective_port"):  # host named several addresses
            server.close()
            raise ValueError(f"HTTP bind address {self.host!r} is not a single address")
        self._server = server
        self.port = int(server.effective_port)
        self._thread = threading.Thread(target=self._run, name="plowshare-http", daemon=True)
        self._thread.start()
        log.info("- http listening on %s:%d", self.host, self.port)

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception:  # logged here; the supervisor sees the thread end
            log.exception("- http server loop crashed")
            raise

    def is_alive(self) -> bool:
        """The supervisor's probe (``appliance.app``): is the serving thread up?"""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        sockmap = server._map  # waitress's loop runs while this map is non-empty

        def close_all() -> None:  # runs in the server's loop thread
            wasyncore.close_all(sockmap)

        if thread.is_alive():
            try:
                server.trigger.pull_trigger(close_all)
                thread.join(timeout)
            except OSError as exc:
                # waitress closes its trigger pipe when its loop winds down
                # (seen under load as EBADF): the loop is going; close from here
                log.warning("- http server wake-up failed (%s); closing from outside", exc)
        if thread.is_alive() or sockmap:
            log.warning("- http server did not stop in %.1fs; closing from outside", timeout)
            wasyncore.close_all(sockmap)
            thread.join(timeout)
        server.task_dispatcher.shutdown(timeout=timeout)
        self._server = self._thread = None
        log.info("- http stopped")
