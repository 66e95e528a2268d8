"""The messages of Cartesia's TTS websocket, server to client: a sans-I/O parser.

``parse_server_message(raw)`` turns one text frame into a validated
``ServerMessage`` (chunk audio decoded from base64, word timestamps as
``(word, start_s, end_s)`` triples, errors with their status) or raises
``ProtocolError`` naming what is wrong. No sockets, no SDK: the service feeds
it the bytes it reads.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from vantum_pipeline.errors import ProtocolError

__all__ = ["ServerMessage", "parse_server_message"]


@dataclass(frozen=True, slots=True)
class ServerMessage:
    """One message from the TTS websocket, validated."""

    type: str
    context_id: str | None
    audio: bytes = b""
    words: tuple[tuple[str, float, float], ...] = ()
    done: bool = False
    status_code: int | None = None
    error: str = ""


def parse_server_message(raw: bytes | str) -> ServerMessage:
    """Parse a server message; ProtocolError when it is malformed.

    Unknown message types come back as they are (``type`` set, nothing else):
    the caller ignores them, as newer API versions may add types.
    """
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"cartesia: message is not JSON ({exc})", raw) from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("cartesia: message is not an object with a type", raw)
    kind = data["type"]
    context_id = data.get("context_id")
    if context_id is not None and not isinstance(context_id, str):
        raise ProtocolError(f"cartesia: context_id must be a string, got {type(context_id).__name__}", raw)
    done = data.get("done") is True
    if kind == "chunk":
        payload = data.get("data")
        if not isinstance(payload, str) or context_id is None:
            raise ProtocolError("cartesia: chunk without data or context_id", raw)
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("cartesia: chunk data is not base64", raw) from None
        return ServerMessage(kind, context_id, audio=audio, done=done)
    if kind == "timestamps":
        stamps = data.get("word_timestamps")
        if stamps is None:
            return ServerMessage(kind, context_id, done=done)
        words, starts, ends = (stamps.get(k) if isinstance(stamps, dict) else None for k in ("words", "start", "end"))
        if not (isinstance(words, list) and isinstance(starts, list) and isinstance(ends, list)):
            raise ProtocolError("cartesia: word_timestamps needs words, start and end lists", raw)
        if not len(words) == len(starts) == len(ends):
            raise ProtocolError("cartesia: word_timestamps lists differ in length", raw)
        try:
            triples = tuple((str(w), float(s), float(e)) for w, s, e in zip(words, starts, ends, strict=True))
        except (TypeError, ValueError):
            raise ProtocolError("cartesia: word_timestamps times are not numbers", raw) from None
        return ServerMessage(kind, context_id, words=triples, done=done)
    if kind == "error":
        status = data.get("status_code")
        parts = [str(data[k]) for k in ("title", "message", "error_code") if data.get(k)]
        return ServerMessage(
            kind,
            context_id,
            done=True,
            status_code=status if isinstance(status, int) else None,
            error=": ".join(parts) or "unspecified error",
        )
    return ServerMessage(kind, context_id, done=done)
