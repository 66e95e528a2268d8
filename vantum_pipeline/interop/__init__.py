"""Hosting other frameworks' processors inside vantum pipelines.

Each framework is an optional extra and is imported only by its own module:
``vantum_pipeline.interop.pipecat`` needs ``pip install vantum-pipeline[pipecat]``.
Importing this package imports no framework.
"""

#: What importing a pipecat module of this package says when pipecat is missing.
PIPECAT_MISSING = (
    "vantum_pipeline.interop.pipecat needs pipecat-ai, which is not installed: pip install vantum-pipeline[pipecat]"
)
