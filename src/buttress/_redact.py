"""Hiding credentials in text that reaches logs, reports and endpoints.

A connection string quoted in an error (``postgresql://app:pw@db/x``), a ``password=`` or
``token=`` parameter, an ``Authorization:`` header: whatever an application's exception says,
buttress's own output shows ``***`` in place of the secret. Used by the event log lines, the
health report and the operator endpoints alike.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

# The password runs to the last "@" before the query, the fragment or the end of the URL: one
# written without percent-encoding may hold "@" or "/" (libpq and most clients then misread the
# host, but the text must not show it). An "@" in the path is taken as the password's end too,
# hiding the host with it: more than needed, never less.
# (The lookbehind starts a scheme only where a run of scheme characters starts: without it a
# long run of letters was tried from each of its characters, quadratic in its length.)
_SECRET_IN_URL = re.compile(
    r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):"
    r"[^\s'\"?#]*@"
)
_SECRET_PARAM = re.compile(
    r"(?i)\b(?P<key>password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|authorization)"
    r"(?P<sep>\s*[=:]\s*)(?P<value>\"[^\"]*\"|'[^']*'|(?:(?:bearer|basic|token)\s+)?[^\s&;,]+)"
)


def redact(text: str) -> str:
    """``text`` with passwords in URLs/DSNs and ``password=``/``token=``-style values hidden."""
    text = _SECRET_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}{m['sep']}***", text)
