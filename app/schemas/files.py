"""Files: OpenAI's `file` object plus what validation found (format, examples, tokens)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import ListEnvelope


class LineError(BaseModel):
    line: int | None = Field(description="1-based line number; null for file-level errors.")
    field: str = Field(description="Path inside the line, e.g. `messages[2].role`.")
    code: str
    message: str


class FilePublic(BaseModel):
    id: str = Field(examples=["file-3kQ9v0TnVx1mZbY7cR2sLp4a"])
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    sha256: str | None = None
    format: Literal["chat", "prompt_completion", "text"] | None = Field(
        None, description="The one JSONL format every line of the file uses."
    )
    example_count: int
    token_estimates: dict[str, int] = Field(
        description="Tokens per model family (llama, mistral, gemma2) of one epoch, before "
        "max_seq_len cuts long examples (a job's estimate applies its max_seq_len)."
    )
    token_estimate_method: dict[str, str] = Field(
        description="Per family: `tokenizer:<model>` (every example rendered and counted "
        "with that installed model's tokenizer and chat template: exact), "
        "`tokenizer_partial:<model>` (the same, but a few examples could not be counted "
        "exactly) or `heuristic:<n>_bytes_per_token` (no model of the family was installed "
        "at upload: a job's estimate adds a margin)."
    )
    errors: list[LineError] = Field(default_factory=list)


class FileList(ListEnvelope):
    data: list[FilePublic]


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
