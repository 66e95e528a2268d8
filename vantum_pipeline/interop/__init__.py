"""Hosting other frameworks' processors inside vantum pipelines.

Each framework is an optional extra and is imported only by its own module:
``vantum_pipeline.interop.pipecat`` needs ``pip install vantum-pipeline[pipecat]``.
Importing this package imports no framework.
"""
