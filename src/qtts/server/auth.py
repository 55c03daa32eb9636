"""The optional API key: OpenAI's Bearer scheme on every `/v1/` route, a 401 in OpenAI's error shape
otherwise. Health, readiness and metrics stay open for probes and scrapers."""

from __future__ import annotations

import secrets

from starlette.responses import JSONResponse

from .schemas import ApiError

PROTECTED_PREFIX = "/v1/"


class ApiKeyCheck:
    """ASGI middleware letting through `/v1/` requests that carry `Authorization: Bearer <api_key>`."""

    def __init__(self, app, api_key: str):
        self.app = app
        self._expected = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        given = _bearer_token(scope)
        if given is not None and secrets.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        message = ("no API key: send it as the header 'Authorization: Bearer YOUR_KEY'" if given is None
                   else "incorrect API key")
        error = ApiError(401, message, code="invalid_api_key")
        response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _bearer_token(scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return None
