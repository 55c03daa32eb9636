"""What a request body may be while it arrives: at most so many bytes, each piece within a deadline.

Both are checked as the body streams in, so a client can neither make the server hold a 100 MB body (the
handlers would parse it whole) nor keep a request open by sending a byte a minute. A declared
`Content-Length` above the limit is refused before a byte of the body is read.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from .schemas import ApiError

MULTIPART = b"multipart/form-data"
MAX_JSON_BYTES = 2**20  # a speech request at every text limit, each character JSON-escaped, is under 300 KB
MAX_UPLOAD_BYTES = 10 * 2**20  # OpenAI's limit for a voice sample
MAX_FORM_BYTES = 2**20  # the transcript, the name and multipart framing beside the sample


class BodyLimits:
    """ASGI middleware: a multipart body (a voice upload) may have `max_upload_bytes`, any other body
    `max_json_bytes`; while a body is arriving, each piece must come within `piece_timeout` seconds.

    Over the size: 413. Stalled: 408. Once the body is complete, receiving (a disconnect) has no deadline."""

    def __init__(self, app, *, max_json_bytes: int, max_upload_bytes: int, piece_timeout: float):
        self.app = app
        self.max_json_bytes, self.max_upload_bytes = max_json_bytes, max_upload_bytes
        self.piece_timeout = piece_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # header names are lower-case in ASGI
        limit = (self.max_upload_bytes if headers.get(b"content-type", b"").lower().startswith(MULTIPART)
                 else self.max_json_bytes)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        received = 0
        body_complete = False

        async def receive_within_limits():
            nonlocal received, body_complete
            if body_complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.piece_timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body stalled: no data for {self.piece_timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large_message(limit))
                body_complete = not message.get("more_body", False)
            else:
                body_complete = True
            return message

        await self.app(scope, receive_within_limits, send)


def _too_large_message(limit: int) -> str:
    return f"the request body is larger than this server accepts ({limit} bytes)"


def _too_large(limit: int) -> JSONResponse:
    error = ApiError(413, _too_large_message(limit), code="request_too_large")
    # The body is left unread, so the connection cannot carry another request.
    return JSONResponse(error.body(), status_code=413, headers={"Connection": "close"})
