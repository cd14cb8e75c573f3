"""The HTTP side of the appliance: a Flask application factory.

``create_app(services)`` builds the WSGI app that :class:`appliance.servers.
http.HttpServer` serves.  Today it carries the provisioning-network endpoints
(:mod:`appliance.web.boot`: boot scripts, kickstarts, completion callbacks,
kernels/initrds, the netboot tree).  Errors are answered in plain text, since
the clients are firmware, installers and curl, not browsers.
"""

from __future__ import annotations

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from .services import EXTENSION_KEY, Services, services

__all__ = ["Services", "create_app", "services"]

MAX_REQUEST_BODY = 64 * 1024  # nothing on the boot network uploads anything


def _plain_error(exc: HTTPException) -> Response:
    return Response(f"{exc.code} {exc.name}\n", status=exc.code,
                    mimetype="text/plain", headers={"Cache-Control": "no-store"})


def create_app(services: Services) -> Flask:
    """Build the Flask app around ``services`` (no I/O, no sockets)."""
    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=MAX_REQUEST_BODY,
        # send_file: let clients revalidate kernels/initrds (ETag, Last-Modified)
        SEND_FILE_MAX_AGE_DEFAULT=None,
    )
    app.extensions[EXTENSION_KEY] = services
    app.register_error_handler(HTTPException, _plain_error)

    from . import boot
    app.register_blueprint(boot.bp)
    return app
