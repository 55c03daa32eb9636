"""A deadline for request headers: no connection may hold the server by sending them too slowly.

uvicorn closes idle kept-alive connections (`timeout_keep_alive`) but sets no deadline on a request that
is still arriving: a client that opens a connection and sends nothing, or a byte a minute, would keep it
forever (slowloris). `header_timeout_protocol` adds that deadline to uvicorn's h11 protocol; the body's
deadline is `request_body.BodyLimits`.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol; a request whose headers are not complete `header_timeout` seconds after
    its first byte (or after the connection opened) is dropped."""

    header_timeout: float

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # the next request has begun but its headers are not all here
            self._arm_header_deadline()
        else:
            self._disarm_header_deadline()

    def connection_lost(self, exc) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        # Armed once per request: bytes trickling in must not push the deadline back.
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_overdue(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """A uvicorn `http` protocol class that drops requests whose headers take longer than `seconds`."""
    return type("HeaderDeadlineH11", (_HeaderDeadlineH11,), {"header_timeout": seconds})
