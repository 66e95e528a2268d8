"""Talk to the sales bot through your microphone and speaker.

    python examples/local_mic.py

Uses Deepgram, OpenAI and Cartesia for the roles whose keys are in the
environment or in .env (DEEPGRAM_API_KEY, OPENAI_API_KEY, CARTESIA_API_KEY),
and the offline engines (pocketsphinx, the scripted agent, espeak-ng) for the
others: with no keys at all it runs fully offline. Needs the ``local`` extra
and PortAudio (``pip install 'vantum-pipeline[offline,local]'``; on
Debian/Ubuntu also ``apt-get install libportaudio2``). Use headphones.
The devices are the system's defaults, or those named by VANTUM_INPUT_DEVICE
and VANTUM_OUTPUT_DEVICE (an index or part of a name: ``vantum devices``
lists them).
"""

import asyncio
import sys

from vantum_pipeline.demo.local_voice import run_local_voice
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.redact import install_log_redaction

if __name__ == "__main__":
    install_log_redaction(sys.stderr, level="WARNING")  # the keys come from .env
    try:
        sys.exit(asyncio.run(run_local_voice(offline_only=False)))
    except ConfigurationError as exc:
        print(f"local_mic: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
