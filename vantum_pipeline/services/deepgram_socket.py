"""Deepgram's ``/v1/listen`` websocket opened without permessage-deflate.

deepgram-sdk 7 opens the stream with ``websockets``' legacy client and its
default options, which offer permessage-deflate. A server that accepts it
makes the client deflate every audio message (μ-law and PCM do not compress:
CPU for nothing) and inflate every JSON result, and the SDK has no option to
turn it off. ``connect_listen`` opens the very request ``listen.v1.connect``
would (the same URL, query string and headers, taken from the SDK's own
client wrapper and query encoding) with compression off, and hands the open
connection to the SDK's ``AsyncV1SocketClient``: messages are still parsed,
and ``Finalize``, ``CloseStream`` and ``KeepAlive`` still sent, by the SDK.

The socket client it yields (``ListenSocket``, the SDK's ``AsyncV1SocketClient``
with one method replaced) reads each server message's JSON itself: ``recv``
returns a ``JSONMessage``, attribute access to the decoded object as the
SDK's models give it (a missing field reads as None), instead of the model
the SDK would build with ``construct_type`` (50-70 µs a message, most of the
cost of a result; ``json.loads`` of the same message takes 6 µs). The
service reads the same fields either way and checks every one of them (the
SDK's models are not validated either). Sending stays the SDK's.

Nothing in the SDK or ``websockets`` is patched: other users of the SDK in
the process keep its own connect. A refused upgrade raises the ``ApiError``
the SDK raises (status, the request headers redacted), with the
``websockets`` exception holding the response (``Retry-After``, ``dg-error``)
as its ``__context__``.
"""

from __future__ import annotations

import inspect
import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from deepgram import AsyncDeepgramClient
from deepgram.core import websocket_compat
from deepgram.core.api_error import ApiError
from deepgram.core.jsonable_encoder import jsonable_encoder
from deepgram.core.query_encoder import encode_query
from deepgram.core.remove_none_from_dict import remove_none_from_dict
from deepgram.listen.v1.client import AsyncV1Client
from deepgram.listen.v1.socket_client import AsyncV1SocketClient
from websockets.legacy.client import connect as legacy_connect

from vantum_pipeline.errors import ConfigurationError

__all__ = ["LISTEN_PATH", "JSONMessage", "ListenSocket", "connect_listen", "listen_request"]

LISTEN_PATH = "/v1/listen"

#: The query parameters ``listen.v1.connect`` takes, in the order it encodes them.
_QUERY_ORDER = tuple(
    name
    for name in inspect.signature(AsyncV1Client.connect).parameters
    if name not in ("self", "authorization", "request_options")
)


def listen_request(client: AsyncDeepgramClient, options: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The URL and headers ``client.listen.v1.connect(**options)`` opens.

    ``options`` are that method's query keyword arguments; one it does not
    take is a ``ConfigurationError`` (the SDK would raise a ``TypeError``)."""
    unknown = sorted(set(options) - set(_QUERY_ORDER))
    if unknown:
        raise ConfigurationError(f"not a Deepgram listen query parameter: {', '.join(unknown)}")
    wrapper = client._client_wrapper
    url = wrapper.get_environment().production + LISTEN_PATH
    query = encode_query(
        jsonable_encoder(remove_none_from_dict({name: options[name] for name in _QUERY_ORDER if name in options}))
    )
    if query:
        url += "?" + urllib.parse.urlencode(query)
    return url, wrapper.get_headers()


class JSONMessage:
    """A decoded JSON object read by attribute, as the SDK's models read: ``message.channel.alternatives``.

    A field the object lacks reads as None (a name starting with ``_`` is
    not a field: AttributeError); an object inside is a ``JSONMessage``
    too, a list a list of what its items read as. ``raw`` is the decoded
    object itself.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # no field of Deepgram's; copy, pickle and friends probe for these
            raise AttributeError(name)
        return _read(self.raw.get(name))

    def __repr__(self) -> str:
        return f"JSONMessage({json.dumps(self.raw, default=str)})"


def _read(value: Any) -> Any:
    if isinstance(value, dict):
        return JSONMessage(value)
    if isinstance(value, list):
        return [_read(item) for item in value]
    return value


class ListenSocket(AsyncV1SocketClient):
    """The SDK's socket client, receiving ``JSONMessage`` (or bytes) instead of its models.

    A text message that is not JSON raises ``json.JSONDecodeError`` (as the
    SDK's ``recv`` does); JSON that is not an object comes back as it was
    decoded (a list, a string, a number), for the caller to refuse.
    """

    def __init__(self, *, websocket: Any) -> None:
        super().__init__(websocket=websocket)
        self.protocol = websocket

    async def recv(self) -> Any:
        data = await self.protocol.recv()
        if isinstance(data, bytes):
            return data
        decoded = json.loads(data)
        return JSONMessage(decoded) if isinstance(decoded, dict) else decoded


@asynccontextmanager
async def connect_listen(client: AsyncDeepgramClient, options: Mapping[str, Any]) -> AsyncIterator[ListenSocket]:
    """``client.listen.v1.connect(**options)`` without permessage-deflate, reading messages as ``JSONMessage``."""
    url, headers = listen_request(client, options)
    try:
        async with legacy_connect(url, extra_headers=headers, compression=None) as protocol:
            yield ListenSocket(websocket=protocol)
    # The refusal the SDK catches (InvalidStatusCode or InvalidStatus, by websockets version).
    except websocket_compat.InvalidWebSocketStatus as exc:  # type: ignore[attr-defined]
        status = websocket_compat.get_status_code(exc)
        body = (
            "Websocket initialized with invalid credentials."
            if status == 401
            else "Unexpected error when initializing websocket connection."
        )
        raise ApiError(status_code=status, headers=dict(headers), body=body) from exc
