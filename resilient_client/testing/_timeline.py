"""
The text a test reads when something went wrong (the timeline of what
happened on the fake clock, the strict-mode report, an unmatched request's
near misses), all through one redaction.

Why one `Redaction` for every rendering: a test's report ends up in CI logs,
so it must keep secrets out as the library's own logs and events do. The
records already carry URLs redacted with their session's ``secrets``, but the
text around them does not: a peer's repr quotes the URL the test scripted,
a near miss quotes a query or a matcher's reason, an event quotes an error.
So every rendered text goes through `Redaction.text` last: each URL through
the library's `redact_url`, each ``name=value`` of a secret query name, then
every secret value the recorded requests carried (`secret_values`: secret
headers, Authorization tokens, cookies, query values, URL passwords).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import requests

from .._config import Secrets
from .._events import Event
from .._redact import REDACTED, redact_url, secret_values
from ._records import HOT, AppCall, PeerCall

__all__ = ["Redaction", "render_report", "render_timeline", "render_unmatched"]

# A URL inside free text ends at whitespace or a character that closes a quote or a repr.
_URL = re.compile(r"""https?://[^\s'"<>()\[\]{}]+""")


class Redaction:
    """
    What a registry must never show: the secret names of every session it
    knows, and the secret values its recorded requests carried. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.secrets = Secrets()
        self._values: set[str] = set()
        self._pair: re.Pattern[str] | None = None

    def learn_secrets(self, secrets: Secrets) -> None:
        """Redact what *secrets* names from now on (the union over every session)."""
        with self._lock:
            known = self.secrets
            if secrets.headers <= known.headers and secrets.query <= known.query:
                return
            self.secrets = Secrets(
                headers=known.headers | secrets.headers, query=known.query | secrets.query
            )
            names = "|".join(re.escape(q) for q in sorted(self.secrets.query))
            self._pair = re.compile(rf"(?i)(?<![\w.-])({names})=[^&\s'\"<>()\[\]{{}}]+")

    def learn_request(self, request: requests.PreparedRequest, secrets: Secrets) -> None:
        """Remember the secret values *request* carries, as *secrets* defines them."""
        found = secret_values(request.url or "", request.headers, secrets)
        if found:
            with self._lock:
                self._values |= found

    def url(self, url: str, secrets: Secrets | None = None) -> str:
        """*url* through `redact_url`, with *secrets* (default: every session's)."""
        return redact_url(url, self.secrets if secrets is None else secrets)

    def text(self, text: str) -> str:
        """*text* with every URL, secret query pair and known secret value redacted."""
        with self._lock:
            secrets, pair, values = self.secrets, self._pair, sorted(self._values, key=len)
        text = _URL.sub(lambda m: redact_url(m.group(0), secrets), text)
        if pair is not None:
            text = pair.sub(rf"\1={REDACTED}", text)
        # Longest first, so that a value containing another goes whole.
        for value in reversed(values):
            text = text.replace(value, REDACTED)
        return text


def render_timeline(
    entries: Iterable[tuple[float, object]], elapsed: float, redaction: Redaction
) -> str:
    """
    What happened, in order, on the fake clock: calls the application made,
    requests that reached a peer and how it answered, and events.
    """
    lines = [f"What happened (fake clock, {elapsed:.3f}s elapsed):"]
    for at, entry in entries:
        if isinstance(entry, AppCall):
            detail = f"{entry.outcome}"
            if entry.done:
                detail += f" after {entry.attempts} attempt{'s' if entry.attempts != 1 else ''}"
                detail += f", {entry.reached} reached the peer, {entry.duration:.3f}s"
            lines.append(
                f"  {at:8.3f}  call  {entry.method} {entry.shown_url} [{entry.endpoint}]"
                f" -> {detail}"
            )
        elif isinstance(entry, PeerCall):
            by = f"  by {entry.peer!r}" if entry.peer is not None else ""
            lines.append(
                f"  {at:8.3f}    peer  {entry.method} {entry.shown_url} -> {entry.outcome}{by}"
            )
        elif isinstance(entry, Event) and not isinstance(entry, HOT):
            text = " ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in entry.as_dict().items()
                if k not in ("event", "endpoint", "method", "url")
            )
            lines.append(f"  {at:8.3f}    {entry.kind} [{entry.endpoint}] {text}")
    if len(lines) == 1:
        lines.append("  nothing")
    return redaction.text("\n".join(lines))


def render_report(problems: Sequence[str], timeline: str, redaction: Redaction) -> str:
    """Strict mode's report: the problems, numbered, then the timeline."""
    lines = [
        f"fake peers: {len(problems)} problem{'s' if len(problems) != 1 else ''} (strict mode)"
    ]
    lines += [f"{i}. {p}" for i, p in enumerate(problems, 1)]
    lines += ["", timeline]
    return redaction.text("\n".join(lines))


def render_unmatched(
    call: PeerCall, near_misses: list[tuple[int, str, str]], redaction: Redaction
) -> list[str]:
    """
    Why *call* matched nothing: the near misses, given as (closeness, what,
    why it missed), closest first, then how to script it.
    """
    rows = sorted(near_misses, key=lambda row: -row[0])
    where = f" [endpoint {call.endpoint}]" if call.endpoint else ""
    lines = [f"{call.method} {call.shown_url}{where} at t={call.at:.3f} matched no fake peer."]
    if rows:
        lines.append("Near misses, closest first:")
        lines += [f"  - {label}: {why}" for _, label, why in rows[:8]]
        if len(rows) > 8:
            lines.append(f"  ... and {len(rows) - 8} more")
    else:
        lines.append("Nothing is scripted.")
    parts = urlsplit(call.url)
    url = f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"
    lines.append(
        f"Script it, e.g. peers.url({url!r}).respond(200), "
        "or set peers.strict = False to have unmatched requests refused."
    )
    # Matchers' reasons quote what the request carried: redacted like the rest.
    return [redaction.text(line) for line in lines]
