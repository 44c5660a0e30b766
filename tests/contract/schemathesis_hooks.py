"""Schemathesis hooks for tests/contract/test_schemathesis.py (loaded by the CLI through
SCHEMATHESIS_HOOKS=tests.contract.schemathesis_hooks).

- Creating bodies sometimes name a training file that really exists (CRMA_CONTRACT_FILE_ID):
  random ids would only ever reach the 404 branch, so no job would be created and the
  create -> get -> cancel links would have nothing to follow.
- A check fails any response that contains an id of another tenant (CRMA_CONTRACT_FOREIGN_IDS),
  whatever the operation and the status."""

from __future__ import annotations

import os

import schemathesis
from hypothesis import strategies as st
from schemathesis.core.parameters import ParameterLocation

GOOD_FILE = os.environ.get("CRMA_CONTRACT_FILE_ID", "")
GOOD_MODEL = "smollm2-135m-instruct"
FOREIGN_IDS = [i for i in os.environ.get("CRMA_CONTRACT_FOREIGN_IDS", "").split(",") if i]

JOB_BODIES = {"POST /v1/fine_tuning/jobs", "POST /v1/fine_tuning/jobs/estimate"}
RUN_BODIES = {"POST /v1/continual/runs", "POST /v1/continual/runs/estimate",
              "POST /v1/continual/runs/{run_id}/domains"}


def _usable_job(body: dict) -> dict:
    usable = {**body, "training_file": GOOD_FILE, "model": GOOD_MODEL}
    usable.pop("validation_file", None)
    return usable


def _usable_run(body: dict) -> dict:
    domains = body.get("domains")
    if not isinstance(domains, list) or not domains:
        return body
    usable_domains = [
        {**d, "name": f"domain-{i}", "training_file": GOOD_FILE, "validation_file": GOOD_FILE}
        if isinstance(d, dict) else d for i, d in enumerate(domains)]
    usable = {**body, "domains": usable_domains}
    if "model" in body or "mode" in body:
        usable["model"] = GOOD_MODEL
    return usable


def _usable_bodies(label: str, body: dict) -> list[dict]:
    if label in JOB_BODIES:
        return [_usable_job(body), {"model": GOOD_MODEL, "training_file": GOOD_FILE}]
    if label in RUN_BODIES:
        minimal = {"domains": [{"name": "a", "training_file": GOOD_FILE,
                                "validation_file": GOOD_FILE}]}
        if label != "POST /v1/continual/runs/{run_id}/domains":
            minimal["model"] = GOOD_MODEL
        return [_usable_run(body), minimal]
    return []


@schemathesis.hook
def flatmap_case(context, case):  # noqa: ANN001, ANN201 - schemathesis' hook signature
    """Positive cases only: a negative body must stay schema-violating (re-adding a dropped
    required field would make it valid, and then accepting it is right)."""
    label = context.operation.label if context.operation is not None else ""
    if not GOOD_FILE or not isinstance(case.body, dict):
        return st.just(case)
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY):
        return st.just(case)
    variants = _usable_bodies(label, case.body)
    if not variants:
        return st.just(case)

    def with_body(body: dict):  # noqa: ANN202
        case.body = body
        return case

    return st.sampled_from([case.body, *variants]).map(with_body)


@schemathesis.check
def no_foreign_tenant_data(ctx, response, case) -> None:  # noqa: ANN001
    text = response.text or ""
    leaked = [i for i in FOREIGN_IDS if i in text]
    if leaked:
        raise AssertionError(f"the response contains another tenant's ids: {leaked}")


@schemathesis.hook
def before_call(context, case, kwargs) -> None:  # noqa: ANN001
    """Every phase finds the training file's id through the list and would delete it; its
    DELETE goes to an id that does not exist instead (the route is fuzzed all the same)."""
    if GOOD_FILE and case.method.upper() == "DELETE" and \
            case.path_parameters.get("file_id") == GOOD_FILE:
        case.path_parameters["file_id"] = "file-000000000000000000000000"
