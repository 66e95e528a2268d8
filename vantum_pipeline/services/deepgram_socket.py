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

Nothing in the SDK or ``websockets`` is patched: other users of the SDK in
the process keep its own connect. A refused upgrade raises the ``ApiError``
the SDK raises (status, the request headers redacted), with the
``websockets`` exception holding the response (``Retry-After``, ``dg-error``)
as its ``__context__``.
"""

from __future__ import annotations

import inspect
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

__all__ = ["LISTEN_PATH", "connect_listen", "listen_request"]

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


@asynccontextmanager
async def connect_listen(client: AsyncDeepgramClient, options: Mapping[str, Any]) -> AsyncIterator[AsyncV1SocketClient]:
    """``client.listen.v1.connect(**options)`` without permessage-deflate."""
    url, headers = listen_request(client, options)
    try:
        async with legacy_connect(url, extra_headers=headers, compression=None) as protocol:
            yield AsyncV1SocketClient(websocket=protocol)
    # The refusal the SDK catches (InvalidStatusCode or InvalidStatus, by websockets version).
    except websocket_compat.InvalidWebSocketStatus as exc:  # type: ignore[attr-defined]
        status = websocket_compat.get_status_code(exc)
        body = (
            "Websocket initialized with invalid credentials."
            if status == 401
            else "Unexpected error when initializing websocket connection."
        )
        raise ApiError(status_code=status, headers=dict(headers), body=body) from exc
