"""Fallback phrases: what the bot says when it cannot say what it meant to.

The callee must never hear dead air. When the LLM is late, rate limited or
failing, the LLM service speaks one of these (as ``TTSSpeakFrame(text,
category)``); the user aggregator asks the callee to repeat a transcript it
cannot trust. Defaults are the product's; a campaign overrides any of them:

    phrases = FallbackPhrases().with_overrides(greeting="Hi, this is Alex from Acme. Got a minute?")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from vantum_pipeline.errors import ConfigurationError

__all__ = ["CATEGORIES", "FallbackPhrases"]

#: timeout: no first token in time; error: the request failed for good;
#: rate_limited: waiting out a 429; greeting: the opening turn failed;
#: thinking: a filler while the first token is slow; goodbye: the call ends
#: and the model said nothing; ask_to_repeat: a low-confidence transcript.
CATEGORIES: Final = ("timeout", "error", "rate_limited", "greeting", "thinking", "goodbye", "ask_to_repeat")


@dataclass(frozen=True, slots=True)
class FallbackPhrases:
    timeout: str = "I'm having trouble processing that. Could you repeat?"
    error: str = "I'm experiencing technical difficulties. Let me transfer you to a human."
    rate_limited: str = "I need a moment to think. One second..."
    greeting: str = "Hi! This is Sarah from Vantum. How are you today?"
    thinking: str = "That's a great question. Let me think about that..."
    goodbye: str = "Thank you for your time. Goodbye!"
    ask_to_repeat: str = "I'm sorry, I didn't catch that. Could you repeat?"

    def __post_init__(self) -> None:
        for category in CATEGORIES:
            value = getattr(self, category)
            if not isinstance(value, str) or not value.strip():
                raise ConfigurationError(f"fallback phrase {category!r} must be a non-empty string")

    def phrase(self, category: str) -> str:
        """The phrase of ``category`` (one of ``CATEGORIES``)."""
        if category not in CATEGORIES:
            raise ConfigurationError(f"unknown fallback category {category!r}; expected one of {', '.join(CATEGORIES)}")
        text: str = getattr(self, category)
        return text

    def with_overrides(self, overrides: Mapping[str, str] | None = None, **more: str) -> FallbackPhrases:
        """A copy with a campaign's phrases in place of these."""
        changes = {**(overrides or {}), **more}
        unknown = sorted(set(changes) - set(CATEGORIES))
        if unknown:
            raise ConfigurationError(
                f"unknown fallback category {unknown[0]!r}; expected one of {', '.join(CATEGORIES)}"
            )
        return dataclasses.replace(self, **changes)
