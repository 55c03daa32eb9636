"""The OpenAI-compatible speech server: `create_app(tts)` for ASGI hosts, `serve(model)` to run one.

Needs the `server` extra (FastAPI, uvicorn, python-multipart).
"""

from __future__ import annotations

from pathlib import Path

from .app import DEFAULT_MAX_QUEUE, create_app

__all__ = ["create_app", "serve"]


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, device: str | None = None,
          voices_dir: str | Path | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
          model_name: str | None = None) -> None:
    """Load `model` and serve it over HTTP until interrupted."""
    import uvicorn

    import qtts

    tts = qtts.load(model, device=device)
    app = create_app(tts, model_name=model_name or model, voices_dir=voices_dir,
                     max_queue=max_queue)
    uvicorn.run(app, host=host, port=port)
