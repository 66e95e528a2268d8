"""vantum_pipeline: real-time voice agents on the phone, as chains of frame processors.

Importing this package loads the core only (frames, processors, pipelines,
tasks); vendor SDKs are imported by the service modules that need them.
"""

from vantum_pipeline.frames import Frame
from vantum_pipeline.pipeline import Pipeline
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.task import PipelineRunner, PipelineTask

__all__ = [
    "Frame",
    "FrameDirection",
    "FrameProcessor",
    "Pipeline",
    "PipelineRunner",
    "PipelineTask",
]

__version__ = "0.1.0"
