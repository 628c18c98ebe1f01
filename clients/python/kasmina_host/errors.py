"""The exceptions the client raises."""

from __future__ import annotations

from typing import Any, Optional


class KasminaHostError(Exception):
    """The host refused a request, or answered one in a way the client cannot use.

    ``status`` is the HTTP status of the answer (``None`` when there was
    none), ``message`` the host's own message (its ``{"error": ...}`` body,
    or an outcome's ``failure_reason``), ``error_class`` the host's failure
    class when the answer named one (``not_found``, ``conflict``, ...).
    """

    def __init__(self, status: Optional[int], message: str, *, error_class: Optional[str] = None,
                 body: Any = None) -> None:
        Exception.__init__(self, status, message)
        self.status = status
        self.message = message
        self.error_class = error_class
        self.body = body

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"kasmina-host answered {self.status}: {self.message}"


class KasminaHostUnavailable(KasminaHostError, ConnectionError):
    """The host could not be reached, closed the connection, or did not answer in time.

    A ``ConnectionError`` too, so ``except ConnectionError`` catches a host
    that is down. ``status`` is ``None``.
    """

    def __init__(self, message: str) -> None:
        KasminaHostError.__init__(self, None, message)


class KasminaProtocolError(KasminaHostError):
    """The host's answer does not follow the protocol (a malformed binary
    tensor answer, JSON where binary was asked for, a missing output).

    ``status`` is the answer's HTTP status.
    """
