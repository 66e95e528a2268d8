"""``vantum demo``: the library's main job, offline.

- ``phone_call``: one simulated outbound sales call through the production
  path (Twilio media stream; Deepgram, OpenAI and Cartesia on their SDKs),
  against the local stand-ins backed by the offline engines;
- ``console``: the live transcript the demo prints;
- ``recording``: ``call.wav`` (callee left, bot right, as on the line);
- ``local_voice``: ``vantum demo --mic``, the bot on your microphone and speaker.
"""
