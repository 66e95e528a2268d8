"""Protocol-faithful local stand-ins for the services, and pipeline test helpers.

Shipped with the package so that applications test themselves the way the
library does: the real vendor SDKs talking the real wire protocols to servers
on 127.0.0.1, with fault injection. Each fake lives in its own module
(``vantum_pipeline.testing.deepgram`` …) and imports its server dependencies
only when used. ``python -m vantum_pipeline.testing <service> --port N`` runs
one standalone.
"""

from vantum_pipeline.testing.pipeline import Collected, FrameRecorder, PipelineHarness, run_pipeline

__all__ = ["Collected", "FrameRecorder", "PipelineHarness", "run_pipeline"]
