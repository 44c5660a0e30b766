"""Settlement replayed in any order, concurrently and after crashes, posts exactly one
capture and one release per job; every transaction sums to zero; available never goes
negative; the cached balances always equal the ledger. Hypothesis drives random
interleavings of hold / finish / replay / crash steps against real PostgreSQL."""

from __future__ import annotations

import threading

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from app.db.models import Job, LedgerTransaction
from app.domain.errors import InsufficientCredit
from app.domain.job_state import JobStatus
from app.domain.pricing import price_micros
from app.services import billing
from app.services.job_status import transition_job
from tests.billing_support import admit
from race_helpers import balances, make_account, make_file, make_job
from tests.factories import PRICES

MODEL = "mistral-7b-v0.3"
CREDIT = 5_000_000
ENDINGS = [
    (JobStatus.SUCCEEDED, None),
    (JobStatus.CANCELLED, None),
    (JobStatus.FAILED, "worker_lost"),  # our fault: free
    (JobStatus.FAILED, "internal_error"),
    (JobStatus.FAILED, "invalid_training_file"),  # not our fault: pays what was trained
]


def settle_replay_test(factory) -> None:
    class Settlement(RuleBasedStateMachine):
        jobs = Bundle("jobs")

        @initialize()
        def open_account(self) -> None:
            self.account_id = make_account(factory, plan="pro", credit_micros=CREDIT)
            with factory() as session:
                self.file_id = make_file(session, account_id=self.account_id).id
                session.commit()
            self.holds: dict[str, int] = {}
            self.costs: dict[str, int] = {}  # settled jobs only

        @rule(target=jobs, tokens=st.integers(1, 6_000_000),
              max_cost=st.none() | st.integers(1, 3_000_000), crash=st.booleans())
        def hold(self, tokens: int, max_cost: int | None, crash: bool) -> str:
            with factory() as session:
                job = make_job(session, account_id=self.account_id, model=MODEL,
                               file_id=self.file_id)
                try:
                    admitted = admit(session, account_id=self.account_id, model=MODEL,
                                     estimated_tokens=tokens, source_id=job.id,
                                     max_cost_micros=max_cost)
                except InsufficientCredit:
                    session.rollback()
                    return "none"
                if crash:  # dies before COMMIT: no job, no hold
                    session.rollback()
                    return "none"
                session.commit()
            self.holds[job.id] = admitted.hold_micros
            return job.id

        @rule(job_id=jobs, ending=st.sampled_from(ENDINGS), trained=st.integers(0, 7_000_000),
              crash=st.booleans())
        def finish(self, job_id: str, ending, trained: int, crash: bool) -> None:
            if job_id == "none" or job_id in self.costs:
                return
            status, code = ending
            with factory() as session:
                # A crashed finish rolled back, so the job is queued again.
                assert transition_job(session, job_id=job_id, to=JobStatus.RUNNING,
                                      expected=[JobStatus.QUEUED])
                assert transition_job(
                    session, job_id=job_id, to=status, expected=[JobStatus.RUNNING],
                    values={"trained_tokens": trained,
                            "error": {"code": code, "message": "x"} if code else None})
                billing.settle_job(session, job_id=job_id, prices=PRICES)
                if crash:  # the process dies before COMMIT: nothing of it survives
                    session.rollback()
                    return
                session.commit()
            owed = (0 if code in ("worker_lost", "internal_error")
                    else price_micros(MODEL, trained, prices=PRICES))
            self.costs[job_id] = min(owed, self.holds[job_id])

        @rule(job_id=jobs, crash=st.booleans())
        def replay(self, job_id: str, crash: bool) -> None:
            if job_id not in self.costs:
                return
            with factory() as session:
                billing.settle_job(session, job_id=job_id, prices=PRICES)
                session.rollback() if crash else session.commit()

        @rule(job_id=jobs, n=st.integers(2, 10))
        def concurrent_replays(self, job_id: str, n: int) -> None:
            if job_id not in self.costs:
                return
            barrier, errors = threading.Barrier(n), []

            def settle() -> None:
                barrier.wait()
                try:
                    with factory() as session:
                        billing.settle_job(session, job_id=job_id, prices=PRICES)
                        session.commit()
                except Exception as error:  # noqa: BLE001
                    errors.append(error)

            threads = [threading.Thread(target=settle) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors

        @invariant()
        def ledger_matches(self) -> None:
            if not hasattr(self, "account_id"):
                return
            with factory() as session:
                report = billing.reconcile(session, self.account_id)
                kinds = session.execute(
                    select(LedgerTransaction.source_id, LedgerTransaction.kind, func.count())
                    .where(LedgerTransaction.account_id == self.account_id)
                    .group_by(LedgerTransaction.source_id, LedgerTransaction.kind)
                ).all()
                costs = dict(session.execute(
                    select(Job.id, Job.cost_micros).where(Job.account_id == self.account_id)
                ).all())
            assert report.ok, report
            assert all(count == 1 for _, _, count in kinds)
            posted = {(source, kind) for source, kind, _ in kinds}
            for job_id, hold in self.holds.items():
                settled = job_id in self.costs
                assert ((job_id, "capture") in posted) == settled
                assert ((job_id, "release") in posted) == settled
                if settled:
                    assert costs[job_id] == self.costs[job_id]
            open_holds = sum(h for j, h in self.holds.items() if j not in self.costs)
            spent = sum(self.costs.values())
            assert balances(factory, self.account_id) == (CREDIT - spent - open_holds, open_holds)

    run_state_machine_as_test(
        Settlement,
        settings=settings(max_examples=12, stateful_step_count=12, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )


def test_settlement_replays_are_no_ops(threads_factory) -> None:
    settle_replay_test(threads_factory)
