"""Jobs whose base model is being installed wait for it (app/services/model_installs.py,
job_inputs.await_model), on PostgreSQL and SQLite: queued with a `model_wait` event and a
delayed re-offer (no attempt spent), offered at once when the install lands, failed uncharged
with the installer's error when it fails; GET /v1/models reports the install state. The same
against a real `crma dev`: tests/cli/test_dev_first_job.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from app.db.base import utcnow
from app.db.models import Job, JobEvent, ModelInstall, OutboxMessage
from app.db.session import session_scope
from app.services import billing, model_installs, models
from app.services.job_inputs import await_model
from app.settings import Settings
from app.storage.factory import open_store
from tests.factories import PRICES, insert_job, make_account

# A model other tests leave no queued jobs of: the PostgreSQL database is shared by the session
# and an install's end acts on every queued job of its model.
MODEL = "gemma-2-2b-it"


def settings_for(tmp_path: Path, db_url: str) -> Settings:
    return Settings(database_url=db_url, data_dir=tmp_path / "data",
                    model_store_dir=tmp_path / "empty-store", model_wait_retry_s=30)


def new_job(db_url: str) -> tuple[str, str]:
    """(account, queued pro job of MODEL with a hold)."""
    with session_scope(db_url) as session:
        account = make_account(session, plan="pro", credit_micros=5_000_000)
        job = insert_job(session, account_id=account, admit=True, model=MODEL)
        return account, job.id


def events(db_url: str, job_id: str) -> list[JobEvent]:
    with session_scope(db_url) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                               .order_by(JobEvent.seq)).all()
        session.expunge_all()
        return list(rows)


def job_row(db_url: str, job_id: str) -> Job:
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def install_status(settings: Settings, db_url: str) -> tuple[str, str | None]:
    with session_scope(db_url) as session:
        offer = models.get_model(MODEL, model_store_dir=settings.resolved_model_store_dir,
                                 store=open_store(settings), prices=PRICES,
                                 installs=model_installs.states(session))
    return offer.status, offer.install_error


def test_a_job_waits_for_an_install_and_is_offered_when_it_lands(
        tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url)
    assert install_status(settings, db_url) == ("not_installed", None)
    with session_scope(db_url) as session:
        model_installs.begin(session, model_id=MODEL)
    _, job_id = new_job(db_url)
    assert install_status(settings, db_url) == ("installing", None)

    before = utcnow()
    assert await_model(settings, job_id=job_id) == "waiting"
    assert await_model(settings, job_id=job_id) == "waiting"  # a duplicate delivery
    job = job_row(db_url, job_id)
    assert (job.status, job.attempt) == ("queued", 0)  # no claim, no attempt spent
    waits = [e for e in events(db_url, job_id) if e.dedupe_key == "model_wait"]
    assert len(waits) == 1 and "Waiting for the base model" in waits[0].message
    with session_scope(db_url) as session:
        offers = session.scalars(select(OutboxMessage).where(
            OutboxMessage.payload["job_id"].as_string() == job_id)).all()
        # One delayed re-offer (the duplicate found one pending), about 30 s out.
        assert len(offers) == 1
        available = offers[0].available_at
        assert (available.replace(tzinfo=None) - before.replace(tzinfo=None)) \
            >= timedelta(seconds=25)

    with session_scope(db_url) as session:
        assert job_id in model_installs.finish(session, model_id=MODEL)
        offered = session.scalars(select(OutboxMessage).where(
            OutboxMessage.payload["job_id"].as_string() == job_id)).all()
        assert len(offered) == 2  # and one for now
    assert install_status(settings, db_url) == ("not_installed", None)  # installed row, no files


def test_a_failed_install_fails_every_waiting_job_uncharged(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url)
    with session_scope(db_url) as session:
        model_installs.begin(session, model_id=MODEL)
    account, first = new_job(db_url)
    _, second = new_job(db_url)
    with session_scope(db_url) as session:
        failed = model_installs.fail(session, model_id=MODEL, error="disk full", prices=PRICES)
    assert {first, second} <= set(failed)
    assert install_status(settings, db_url) == ("failed", "disk full")
    for job_id in (first, second):
        job = job_row(db_url, job_id)
        assert job.status == "failed" and job.error["code"] == "model_unavailable"
        assert "disk full" in job.error["message"] and "not charged" in job.error["message"]
        assert job.cost_micros == 0
    with session_scope(db_url) as session:
        balance = billing.balance(session, account_id=account)
        assert (balance.available_micros, balance.held_micros) == (5_000_000, 0)
        assert billing.reconcile(session, account).ok
    # A job created after the failure fails at its first delivery, with the same error.
    _, late = new_job(db_url)
    assert await_model(settings, job_id=late) == "failed"
    assert "disk full" in job_row(db_url, late).error["message"]


def test_an_install_that_stops_reporting_reads_as_failed(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url)
    with session_scope(db_url) as session:
        model_installs.begin(session, model_id=MODEL)
        session.execute(update(ModelInstall).values(
            updated_at=utcnow() - timedelta(seconds=model_installs.INSTALL_STALE_S + 5)))
    assert install_status(settings, db_url) == ("failed", model_installs.STALE_ERROR)
    _, job_id = new_job(db_url)
    assert await_model(settings, job_id=job_id) == "failed"
    # Touching it again (its installer is alive after all) makes it installing again.
    with session_scope(db_url) as session:
        model_installs.begin(session, model_id=MODEL)
        model_installs.touch(session, model_id=MODEL)
    assert install_status(settings, db_url) == ("installing", None)


def test_a_model_that_is_there_or_never_installed_is_not_waited_for(
        tmp_path: Path, db_url: str, tiny_model_store: Path) -> None:
    with session_scope(db_url) as session:
        account = make_account(session, plan="pro", credit_micros=5_000_000)
        job_id = insert_job(session, account_id=account, admit=True,
                            model="smollm2-135m-instruct").id
    ready = Settings(database_url=db_url, data_dir=tmp_path / "data",
                     model_store_dir=tiny_model_store)
    assert await_model(ready, job_id=job_id) is None  # installed: claim it
    # Nobody installs it: the claim goes on and the attempt fails as before (model_unavailable).
    assert await_model(settings_for(tmp_path, db_url), job_id=job_id) is None
    assert job_row(db_url, job_id).status == "queued" and not [
        e for e in events(db_url, job_id) if e.dedupe_key == "model_wait"]
