"""
httpx's own INFO line, ``HTTP Request: GET <url> "HTTP/1.1 200 OK"``,
carries the whole URL: a filter on the ``httpx`` logger redacts it as the
sync session's filter redacts urllib3's lines (`_redact.install_log_filter`):
the password always, secret query values with the secrets of the async call
the logging task is making (a context variable: a loop's tasks share its
thread, so the sync side's thread-local cannot say).
"""

from __future__ import annotations

import contextvars
import logging
import threading

from ._config import Secrets
from ._redact import redact_url

__all__ = ["TASK_SECRETS", "install_httpx_log_filter"]

#: The secrets of the async call this task is making (set by the client's ``send``).
TASK_SECRETS: contextvars.ContextVar[Secrets | None] = contextvars.ContextVar(
    "resilient_client_task_secrets", default=None)

_NONE = Secrets()


class _UrlFilter(logging.Filter):
    """Redact the URLs in httpx's records: passwords always, query values per the task's call."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            secrets = TASK_SECRETS.get() or _NONE
            record.args = tuple(_redact_arg(a, secrets) for a in record.args)
        return True


def _redact_arg(arg: object, secrets: Secrets) -> object:
    if not isinstance(arg, str):
        if not hasattr(arg, "netloc"):  # an httpx.URL: only its text is redacted
            return arg
        arg = str(arg)
    return redact_url(arg, secrets) if "://" in arg else arg


_lock = threading.Lock()
_installed = False


def install_httpx_log_filter() -> None:
    """Add the URL filter to httpx's logger, once per process."""
    global _installed
    with _lock:
        if not _installed:
            logging.getLogger("httpx").addFilter(_UrlFilter())
            _installed = True
