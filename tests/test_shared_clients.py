"""SDK clients shared across calls: one per configuration and event loop."""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI

from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
from vantum_pipeline.services.shared_clients import close_shared_clients, shared_client, shared_client_count
from vantum_pipeline.settings import Secret


def _service(key: str = "sk-a", base_url: str = "http://127.0.0.1:9/v1") -> OpenAILLMService:
    return OpenAILLMService(OpenAISettings(api_key=Secret(key), base_url=base_url))


async def test_calls_with_the_same_settings_share_one_client() -> None:
    first, second = _service()._make_client(), _service()._make_client()
    other_key = _service(key="sk-b")._make_client()
    other_url = _service(base_url="http://127.0.0.1:10/v1")._make_client()
    assert isinstance(first, AsyncOpenAI)
    assert first is second
    assert other_key is not first and other_url is not first and other_key is not other_url
    await close_shared_clients()
    assert first.is_closed()
    assert shared_client_count() == 0


async def test_each_event_loop_has_its_own_clients() -> None:
    def in_another_loop() -> object:
        async def build() -> object:
            return shared_client(("x",), object)

        return asyncio.run(build())

    here = shared_client(("x",), object)
    there = await asyncio.to_thread(in_another_loop)
    assert here is shared_client(("x",), object)
    assert there is not here
    await close_shared_clients()


async def test_a_client_that_fails_to_close_does_not_stop_the_others() -> None:
    closed: list[str] = []

    class Broken:
        async def close(self) -> None:
            raise OSError("pool already gone")

    class Fine:
        async def close(self) -> None:
            closed.append("fine")

    class Stuck:
        async def close(self) -> None:
            await asyncio.Event().wait()

    shared_client(("broken",), Broken)
    shared_client(("stuck",), Stuck)
    shared_client(("fine",), Fine)
    async with asyncio.timeout(5):
        await close_shared_clients(timeout=0.1)
    assert closed == ["fine"]


async def test_the_speech_services_share_their_clients_across_calls() -> None:
    from vantum_pipeline.services.deepgram_tts import DeepgramTTSService, DeepgramTTSSettings
    from vantum_pipeline.services.openai_tts import OpenAITTSService, OpenAITTSSettings

    def calls() -> list[DeepgramTTSService | OpenAITTSService]:
        return [
            DeepgramTTSService(DeepgramTTSSettings(api_key=Secret("dg"), url="ws://127.0.0.1:9")),
            OpenAITTSService(OpenAITTSSettings(api_key=Secret("sk"), base_url="http://127.0.0.1:9/v1")),
        ]

    first, second = calls(), calls()
    for service in (*first, *second):
        await service.engine_start()
    try:
        assert [s._client for s in first] == [s._client for s in second]
        assert shared_client_count() == 2
        for service in first:  # one call ends: the others keep the client
            await service.cancel_tasks(timeout=1.0)
            await service.engine_close()
        openai_client = second[1]._client
        assert isinstance(openai_client, AsyncOpenAI) and not openai_client.is_closed()
    finally:
        for service in second:
            await service.cancel_tasks(timeout=1.0)
            await service.engine_close()
        await close_shared_clients()
    assert shared_client_count() == 0
