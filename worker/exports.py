"""One delivery of `crma.export_job`: claim the export, fetch the base model and the job's
adapter, build the merged folder with crma_core.export, publish it and settle its fee
(app/services/exports.py). A duplicate delivery finds the export claimed and does nothing."""

from __future__ import annotations

import logging
import shutil

from app.services import exports
from app.services.job_errors import classify
from app.settings import Settings

log = logging.getLogger(__name__)


def run_export(*, export_id: str, settings: Settings) -> str:
    """Build and publish one export; returns what happened (for logs and tests)."""
    from crma_core.export import CRMANotFoldable, export_merged

    work = exports.claim_export(settings, export_id=export_id)
    if work is None:
        log.info("export %s: nothing to claim (duplicate delivery or finished)", export_id)
        return "skipped"
    workdir = (settings.resolved_worker_cache_dir / "exports"
               / f"{export_id}-attempt-{work.attempt}")
    try:
        model_dir = exports.model_dir_for(settings, work)
        bundle = exports.download_job_bundle(settings, work, workdir / "bundle")
        export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=workdir / "out",
                      format=work.format, dtype=work.dtype,
                      max_shard_size=settings.export_max_shard_size,
                      device=settings.worker_device,
                      info={"export_id": work.id, "job_id": work.job_id,
                            "base_model": work.model})
        exports.publish_export(settings, work, workdir / "out")
        return "succeeded"
    except CRMANotFoldable as exc:  # the API refuses these; a job's files may still say so
        exports.fail_export(settings, work, code="crma_not_foldable", message=str(exc))
        return "failed"
    except Exception as exc:  # noqa: BLE001 - every failure becomes the export's error
        code, message = classify(exc)
        log.error("export %s failed (%s)", export_id, code.value, exc_info=exc)
        exports.fail_export(settings, work, code=code.value, message=message)
        return "failed"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
