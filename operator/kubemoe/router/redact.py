"""Upstream API keys out of models' answers: a backend or proxy that quotes a key in its *answer* (not in an
error) must not hand it to clients, traces or the next model's prompt, where it would reach another provider.

Whole answers are redacted with `redact`. A streamed answer is redacted as it streams by `StreamRedactor`: a
key may arrive split over several chunks, so a chunk's tail that could be the start of a key is held back
until the next chunk shows whether it is one; a chunk that ends in no key prefix (almost every chunk) is
passed on whole, at the cost of one `str.find` per key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

MASK = "***"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def _held_back(text: str, secrets: Sequence[str]) -> int:
    """How many characters at the end of `text` are a proper prefix of some secret (the longest such)."""
    best = 0
    for secret in secrets:
        i = text.find(secret[0], max(0, len(text) - len(secret) + 1))
        while i != -1:
            if secret.startswith(text[i:]):
                best = max(best, len(text) - i)
                break
            i = text.find(secret[0], i + 1)
    return best


class StreamRedactor:
    """Feed each chunk's text in order; `flush()` at the end returns what was held back."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = [s for s in secrets if s]
        self._held = ""

    def feed(self, text: str) -> str:
        if self._held:
            text, self._held = self._held + text, ""
        text = redact(text, self._secrets)
        hold = _held_back(text, self._secrets)
        if hold:
            text, self._held = text[:-hold], text[-hold:]
        return text

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
