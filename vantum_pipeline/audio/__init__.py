"""Pure, sans-I/O audio DSP (no asyncio): the processors and transports build on it.

- ``mulaw``: G.711 mu-law codec, bit-exact with ``audioop``.
- ``resample``: streaming polyphase sample-rate conversion of 16-bit PCM.
- ``vad``: voice activity detection (Silero or WebRTC) with start/stop hysteresis.
- ``wav``: 16-bit PCM WAV files.
"""
