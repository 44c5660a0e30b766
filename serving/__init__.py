"""The serving engine: one base model per process, LoRA + CRMA adapters attached on demand,
generation streamed token by token (see docs/architecture.md, "Serving").

Importing the package does not import torch. ``serving.requests``, ``serving.errors``,
``serving.sources`` and ``serving.client`` stay light, for the API process; the engine
itself is ``serving.transformers_engine.TransformersEngine`` and its HTTP face
``serving.server.create_app``.
"""
