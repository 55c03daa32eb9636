"""The web page at `/`: a hand-written HTML/JS client of the server's own API (no build step, no CDN), so a
person can try the model in a browser with nothing but `qtts serve`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


def add_page(app: FastAPI) -> None:
    """Serve the page at `/` and its script and style under `/static/`."""

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
