"""``viewer_blueprint()``: the live log viewer at ``GET /viewer``.

A static page (HTML, CSS and JavaScript from ``logger/static/viewer``, no
build step, nothing from a CDN) that opens ``/ws`` on the host that served it
and shows records as they arrive, with the server-side filters, pause/resume,
resume-after-reconnect (``?since=``) and a cap on the rows it keeps; above
them, a volume chart by level with rates (``volume.js``, plain SVG). The table
draws only the rows in and near the view (``logtable.js``). With authentication
on, the page signs in (``signin.js``): a token from the URL's fragment or pasted,
checked with ``GET /api/session`` and offered to ``/ws`` as a subprotocol.

Asset URLs in the page are relative (``viewer/viewer.js``), and so is the
WebSocket URL (``ws``), so the viewer also works behind a proxy that mounts
the service under a path prefix. ``/viewer/`` redirects to ``/viewer`` for
that reason. The page gets a strict Content-Security-Policy: it may talk to
its own origin only.

The page's own origin must be allowed to open ``/ws`` (see ``Hub.admit``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, redirect, request, send_from_directory

STATIC = Path(__file__).resolve().parent / "static" / "viewer"
ASSETS = frozenset({"viewer.css", "viewer.js", "volume.js", "logtable.js", "signin.js", "favicon.svg"})

# 'self' in connect-src covers ws:/wss: to the same host (CSP Level 3).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def viewer_blueprint() -> Blueprint:
    viewer = Blueprint("viewer", __name__)

    @viewer.get("/viewer")
    def page() -> Any:
        response = send_from_directory(STATIC, "index.html", max_age=0)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-cache"
        return _hardened(response)

    @viewer.get("/viewer/")
    def page_with_slash() -> Any:
        # Relative: correct behind a proxy that adds a path prefix.
        query = request.query_string.decode("latin-1")
        return redirect("../viewer" + ("?" + query if query else ""), code=308)

    @viewer.get("/viewer/<name>")
    def asset(name: str) -> Any:
        if name not in ASSETS:
            abort(404)
        response = send_from_directory(STATIC, name, max_age=0)
        response.headers["Cache-Control"] = "no-cache"  # revalidated (ETag): upgrades show at once
        return _hardened(response)

    return viewer


def _hardened(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
