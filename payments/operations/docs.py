"""The contract, served: /openapi.yaml, and /docs rendering it with Swagger UI assets served by
the service itself (no CDN: the docs work offline)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
ASSETS_PREFIX = "/docs/assets"

DOCS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Payments API</title>
  <link rel="stylesheet" href="{ASSETS_PREFIX}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS_PREFIX}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS_PREFIX}/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "/openapi.yaml",
      dom_id: "#swagger-ui",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
      validatorUrl: null
    }});
  </script>
</body>
</html>
"""


async def openapi_document(request: Request) -> Response:
    return FileResponse(OPENAPI_PATH, media_type="application/yaml")


async def docs_page(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


def docs_assets() -> StaticFiles:
    return StaticFiles(directory=swagger_ui_path)
