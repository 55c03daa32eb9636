"""The layers a request passes before any handler sees it: CORS, the API key, and the body's limits.

`add_guards` is the one place that stacks them, so their order (CORS outermost, so that browsers get
their preflight answers and see the 401s; the body's limits innermost) is decided once.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from .auth import ApiKeyCheck
from .request_body import MAX_FORM_BYTES, MAX_JSON_BYTES, MAX_UPLOAD_BYTES, BodyLimits

# Seconds a client may take to send its request headers, or between two pieces of its body.
CLIENT_TIMEOUT = 10.0


def add_guards(app: FastAPI, *, api_key: str | None = None, cors_origins: Sequence[str] = (),
               client_timeout: float = CLIENT_TIMEOUT) -> None:
    """Stack the guards on `app`: Starlette runs the middleware added last first."""
    app.add_middleware(BodyLimits, max_json_bytes=MAX_JSON_BYTES, max_upload_bytes=MAX_UPLOAD_BYTES + MAX_FORM_BYTES,
                       piece_timeout=client_timeout)
    if api_key:
        app.add_middleware(ApiKeyCheck, api_key=api_key)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"],
                           allow_headers=["*"], max_age=600)
