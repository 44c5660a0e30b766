"""OpenAPI links: which response feeds which operation (create -> get -> cancel, ...).

Swagger UI shows them under each response, and stateful API fuzzers (schemathesis) follow them
to chain calls: the id a create returns is used to retrieve, list the records of, and cancel
that object. Applied to the generated document by app/main.py."""

from __future__ import annotations

_ID = "$response.body#/id"


def _link(operation_id: str, description: str, **parameters: str) -> dict:
    return {"operationId": operation_id, "description": description, "parameters": parameters}


# (method, path, status) -> {link name: link}
LINKS: dict[tuple[str, str, str], dict[str, dict]] = {
    ("post", "/v1/files", "201"): {
        "RetrieveFile": _link("files-retrieve_file", "The uploaded file.", file_id=_ID),
        "DownloadFile": _link("files-download_file", "Its content.", file_id=_ID),
        "DeleteFile": _link("files-delete_file", "Delete it.", file_id=_ID),
        "CreateJobFromFile": {
            "operationId": "fine-tuning-create_job",
            "description": "Train on it.",
            "requestBody": {"training_file": _ID},
        },
    },
    ("post", "/v1/fine_tuning/jobs", "201"): {
        "RetrieveJob": _link("fine-tuning-retrieve_job", "The job's status.", job_id=_ID),
        "CancelJob": _link("fine-tuning-cancel_job", "Cancel it.", job_id=_ID),
        "ListJobEvents": _link("fine-tuning-list_events", "Its events.", job_id=_ID),
        "ListJobCheckpoints": _link("fine-tuning-list_checkpoints", "Its checkpoints.",
                                    job_id=_ID),
        "ListJobArtifacts": _link("fine-tuning-list_artifacts", "Its adapter files.",
                                  job_id=_ID),
    },
    ("get", "/v1/fine_tuning/jobs/{job_id}", "200"): {
        "CancelRetrievedJob": _link("fine-tuning-cancel_job", "Cancel it.", job_id=_ID),
    },
    ("post", "/v1/fine_tuning/jobs/{job_id}/cancel", "200"): {
        "RetrieveCancelledJob": _link("fine-tuning-retrieve_job", "Its new status.",
                                      job_id=_ID),
    },
    ("post", "/v1/continual/runs", "201"): {
        "RetrieveRun": _link("continual-retrieve_run", "The run's stages.", run_id=_ID),
        "CancelRun": _link("continual-cancel_run", "Cancel it.", run_id=_ID),
        "ListRunArtifacts": _link("continual-list_artifacts", "Its adapter files.",
                                  run_id=_ID),
        "AppendDomains": _link("continual-append_domains", "Add domains once it finished.",
                               run_id=_ID),
    },
    ("post", "/v1/continual/runs/{run_id}/cancel", "200"): {
        "RetrieveCancelledRun": _link("continual-retrieve_run", "Its new status.", run_id=_ID),
    },
}


def add_links(schema: dict) -> None:
    for (method, path, status), links in LINKS.items():
        response = schema["paths"][path][method]["responses"][status]
        response["links"] = {name: dict(link) for name, link in links.items()}
