"""Swagger UI at /docs, for people reading the API (on in development; production only with API_DOCS=1).

Its assets come from the swagger-ui-bundle package, pinned in requirements.txt, and are served from
our own routes: nothing is fetched from another origin, so nothing can change under a pinned version.
The page has no inline script (the spec's URL rides in a data attribute read by our init script), so
the Content-Security-Policy allows scripts, styles and connections from this origin only; images
also from data: URLs, which Swagger UI's stylesheet uses for its icons.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, send_from_directory, url_for
from markupsafe import escape
from swagger_ui_bundle import swagger_ui_path

blp = Blueprint("docs", __name__, url_prefix="/docs")

ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png"})
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Gift Card Provider API</title>
  <link rel="stylesheet" href="{css}">
  <link rel="icon" type="image/png" href="{icon}">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{spec}"></div>
  <script src="{bundle}"></script>
  <script src="{preset}"></script>
  <script src="{init}"></script>
</body>
</html>
"""

# validatorUrl null: Swagger UI would otherwise send the spec's URL to validator.swagger.io for a badge.
_INIT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: document.getElementById("swagger-ui").dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
});
"""


@blp.after_request
def _lock_down(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blp.get("")
def page():
    def asset(name: str) -> str:
        return escape(url_for("docs.asset", name=name))

    html = _PAGE.format(
        css=asset("swagger-ui.css"),
        icon=asset("favicon-32x32.png"),
        spec=escape(url_for("api-docs.openapi_json")),
        bundle=asset("swagger-ui-bundle.js"),
        preset=asset("swagger-ui-standalone-preset.js"),
        init=escape(url_for("docs.init")),
    )
    return Response(html, content_type="text/html; charset=utf-8")


@blp.get("/init.js")
def init():
    return Response(_INIT, content_type="text/javascript; charset=utf-8")


@blp.get("/<name>")
def asset(name: str):
    if name not in ASSETS:
        abort(404)
    return send_from_directory(swagger_ui_path, name)
