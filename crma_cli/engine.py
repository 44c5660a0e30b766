"""`crma engine`: the inference engine process (serving/), one base model per process.

It serves the engine's own HTTP interface (serving/server.py: no authentication, loopback
by default) for the API to call on a private network. Adapters come from the object store
(CRMA_STORAGE_URL, the same store the workers publish bundles to; copied into a local cache
once per adapter) or, with --adapter-source local, from a directory tree.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from crma_cli.worker import _add_supervision_arguments

DEFAULT_PORT = 8100
MODEL_POLL_S = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:
    engine = subparsers.add_parser("engine", help="run the inference engine (one base model)")
    engine.add_argument("--model", default=None,
                        help="model store id (default: smollm2-135m-instruct, or the name of "
                             "--model-dir)")
    engine.add_argument("--model-dir", default=None, help="a Hugging Face model directory "
                        "instead of a model store id")
    engine.add_argument("--host", default="127.0.0.1",
                        help="bind address (loopback by default: the engine has no auth)")
    engine.add_argument("--port", type=int, default=DEFAULT_PORT)
    engine.add_argument("--data-dir", default=None, help="embedded installation root")
    engine.add_argument("--adapter-source", choices=("store", "local"), default="store",
                        help="store: adapter locations are object-store prefixes "
                             "(CRMA_STORAGE_URL); local: directories under --adapter-root")
    engine.add_argument("--adapter-root", default=None, help="root of local adapter directories")
    engine.add_argument("--cache-dir", default=None, help="local copies of store adapters "
                        "(default <worker cache>/engine-adapters)")
    engine.add_argument("--max-batch", type=int, default=4, help="generations decoding at once")
    engine.add_argument("--max-waiting", type=int, default=32,
                        help="queued generations beyond max-batch before answering 503")
    engine.add_argument("--max-adapters", type=int, default=8, help="adapters kept in memory")
    engine.add_argument("--max-adapter-mb", type=int, default=1024,
                        help="memory budget of the kept adapters, MiB")
    engine.add_argument("--max-tokens", type=int, default=1024,
                        help="most tokens one request may generate")
    engine.add_argument("--switch-every", type=int, default=16,
                        help="decode steps one adapter's group runs while others wait")
    engine.add_argument("--context-length", type=int, default=None,
                        help="cap on the context window (default: the model's)")
    engine.add_argument("--no-batching", action="store_true",
                        help="one sequence per forward pass (interleaved, not batched)")
    engine.add_argument("--device", default="cpu")
    engine.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    engine.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    engine.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compile the single-sequence decode step at start (faster "
                             "decoding, a slower start; default: CRMA_ENGINE_COMPILE, on)")
    engine.add_argument("--log-level", default="info")
    engine.add_argument("--wait-for-model", action="store_true",
                        help="if the model is not installed yet, wait for it (crma dev installs "
                             "it in the background) instead of exiting")
    _add_supervision_arguments(engine)
    engine.set_defaults(func=run_engine)


def build_source(args: argparse.Namespace, settings):  # noqa: ANN001, ANN201
    """The AdapterSource this process reads adapters through (the composition root's pick)."""
    from serving.sources import DownloadingAdapterSource, LocalAdapterSource

    if args.adapter_source == "local":
        if not args.adapter_root:
            raise SystemExit("--adapter-source local needs --adapter-root")
        return LocalAdapterSource(Path(args.adapter_root))
    from app.storage.factory import open_store

    cache = Path(args.cache_dir) if args.cache_dir else \
        settings.resolved_worker_cache_dir / "engine-adapters"
    return DownloadingAdapterSource(cache, open_store(settings))


def resolve_model(args: argparse.Namespace, settings) -> tuple[str, Path]:  # noqa: ANN001
    from crma_core.model_store import SMOLLM2_ID, ModelStore

    if args.model_dir:
        directory = Path(args.model_dir)
        if not (directory / "config.json").is_file():
            raise SystemExit(f"{directory} is not a model directory (no config.json)")
        return args.model or directory.name, directory
    model_id = args.model or SMOLLM2_ID
    store = ModelStore(settings.resolved_model_store_dir)
    if getattr(args, "wait_for_model", False) and not store.is_installed(model_id):
        logging.getLogger("crma.engine").info("waiting for %s to be installed in %s",
                                              model_id, store.root)
        while not store.is_installed(model_id):
            time.sleep(MODEL_POLL_S)
    if not store.is_installed(model_id):
        raise SystemExit(f"model {model_id!r} is not installed in {store.root}; "
                         f"run `crma models install {model_id}` or pass --model-dir")
    return model_id, store.path(model_id)


def run_engine(args: argparse.Namespace) -> int:
    if args.exit_with_parent is not None:  # a child of `crma dev` (crma_cli/supervisor.py)
        from crma_cli.parent_watch import follow_parent

        follow_parent(args.exit_with_parent, grace_s=args.exit_grace)
    if args.data_dir:
        os.environ["CRMA_DATA_DIR"] = os.path.abspath(args.data_dir)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from app.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    model_id, model_dir = resolve_model(args, settings)  # before torch: waiting costs no RAM
    import torch
    import uvicorn

    from serving.engine import MiB, EngineConfig
    from serving.server import create_app
    from serving.transformers_engine import TransformersEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(max_batch=args.max_batch, max_waiting=args.max_waiting,
                          max_adapters=args.max_adapters,
                          max_adapter_bytes=args.max_adapter_mb * MiB,
                          max_tokens_cap=args.max_tokens, switch_every=args.switch_every,
                          context_length=args.context_length, batching=not args.no_batching,
                          device=args.device, dtype=args.dtype,
                          compile=settings.engine_compile if args.compile is None else args.compile)
    engine = TransformersEngine(model_dir, model_id=model_id,
                                source=build_source(args, settings), config=config)
    logging.getLogger("crma.engine").info("engine serving %s on http://%s:%d", model_id,
                                          args.host, args.port)
    try:
        uvicorn.run(create_app(engine), host=args.host, port=args.port, access_log=False,
                    log_level=args.log_level.lower())
    finally:
        engine.close()
    return 0
