"""Training-data line formats: detection and validation of one parsed JSONL object.

Pure Python on purpose (no torch, no transformers): the API process imports it to validate
uploads. Three formats are accepted, one per line:

- ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
  with at least one assistant message whose content is not empty;
- ``prompt_completion``: ``{"prompt": str, "completion": non-empty str}``;
- ``text``: ``{"text": non-empty str}`` (every token trains).

Issues carry a ``field`` path such as ``messages[2].role`` and a snake_case ``code``.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT = "chat"
PROMPT_COMPLETION = "prompt_completion"
TEXT = "text"
FORMATS = (CHAT, PROMPT_COMPLETION, TEXT)

ROLES = ("system", "user", "assistant")

# Issue codes (stable: the API returns them to users).
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_FORMAT = "unknown_format"
AMBIGUOUS_FORMAT = "ambiguous_format"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_FIELD = "unknown_field"
EMPTY_MESSAGES = "empty_messages"
INVALID_ROLE = "invalid_role"
EMPTY_CONTENT = "empty_content"
NO_ASSISTANT_MESSAGE = "no_assistant_message"
EMPTY_COMPLETION = "empty_completion"
EMPTY_TEXT = "empty_text"
# File-level (checked by the API across lines): lines of one file use different formats.
MIXED_FORMATS = "mixed_formats"

ISSUE_CODES = (
    NOT_AN_OBJECT, UNKNOWN_FORMAT, AMBIGUOUS_FORMAT, MISSING_FIELD, WRONG_TYPE, UNKNOWN_FIELD,
    EMPTY_MESSAGES, INVALID_ROLE, EMPTY_CONTENT, NO_ASSISTANT_MESSAGE, EMPTY_COMPLETION,
    EMPTY_TEXT, MIXED_FORMATS,
)

_FORMAT_KEYS = {CHAT: ("messages",), PROMPT_COMPLETION: ("prompt", "completion"), TEXT: ("text",)}
_MESSAGE_KEYS = ("role", "content")


@dataclass(frozen=True)
class FieldIssue:
    """One problem found in one example. ``field`` is a path like ``messages[2].role``
    (empty string for the whole line)."""

    field: str
    code: str
    message: str


def detect_format(obj: object) -> str | None:
    """The one format whose keys ``obj`` uses, or None (not an object, none, or several)."""
    if not isinstance(obj, dict):
        return None
    found = [fmt for fmt, keys in _FORMAT_KEYS.items() if any(k in obj for k in keys)]
    return found[0] if len(found) == 1 else None


def detect_and_validate(obj: object) -> tuple[str | None, list[FieldIssue]]:
    """Detect the format of one parsed JSONL line and list everything wrong with it.

    Returns ``(format, issues)``; ``format`` is None when no single format can be recognised
    (then ``issues`` explains why). An example is usable for training iff ``issues`` is empty.
    """
    if not isinstance(obj, dict):
        return None, [FieldIssue("", NOT_AN_OBJECT, "each line must be a JSON object")]
    found = [fmt for fmt, keys in _FORMAT_KEYS.items() if any(k in obj for k in keys)]
    if not found:
        return None, [FieldIssue(
            "", UNKNOWN_FORMAT,
            "expected one of: 'messages' (chat), 'prompt' + 'completion', or 'text'",
        )]
    if len(found) > 1:
        keys = sorted(k for fmt in found for k in _FORMAT_KEYS[fmt] if k in obj)
        return None, [FieldIssue(
            "", AMBIGUOUS_FORMAT, f"keys of several formats in one line: {', '.join(keys)}",
        )]
    fmt = found[0]
    issues = _unknown_keys(obj, _FORMAT_KEYS[fmt], prefix="")
    if fmt == CHAT:
        issues += _validate_chat(obj)
    elif fmt == PROMPT_COMPLETION:
        issues += _validate_prompt_completion(obj)
    else:
        issues += _validate_text(obj)
    return fmt, issues


def clean_format(obj: object) -> str | None:
    """The format of ``obj`` if it is a usable example, else None: the same answer as
    ``detect_and_validate(obj) == (format, [])``, without building the issues (a fast path
    for valid lines; when it says None, ask ``detect_and_validate`` what is wrong)."""
    if type(obj) is not dict:
        return None
    if len(obj) == 1:
        if "text" in obj:
            text = obj["text"]
            return TEXT if type(text) is str and text.strip() else None
        if "messages" in obj:
            return CHAT if _clean_messages(obj["messages"]) else None
        return None
    if len(obj) == 2 and "prompt" in obj and "completion" in obj:
        prompt, completion = obj["prompt"], obj["completion"]
        if type(prompt) is str and type(completion) is str and completion.strip():
            return PROMPT_COMPLETION
    return None


def _clean_messages(messages: object) -> bool:
    if type(messages) is not list or not messages:
        return False
    assistant = False
    for message in messages:
        if type(message) is not dict or len(message) != 2:
            return False
        role, content = message.get("role"), message.get("content")
        if type(content) is not str or role not in ROLES:
            return False  # also when either key is missing (then the other is unknown)
        if role == "assistant":
            if not content.strip():
                return False
            assistant = True
    return assistant


def clean_text(obj: dict, fmt: str) -> str:
    """``example_text`` of an example ``clean_format`` accepted as ``fmt`` (the same string,
    without the checks its shape no longer needs)."""
    if fmt == CHAT:
        return "\n".join([m["content"] for m in obj["messages"]])
    if fmt == PROMPT_COMPLETION:
        return obj["prompt"] + obj["completion"]
    return obj["text"]


def example_text(obj: dict, fmt: str) -> str:
    """The text whose tokens approximate the example's size (for token estimates).

    Chat: the message contents joined by newlines (the chat template adds a few tokens per
    message on top); prompt/completion: prompt followed by completion; text: the text.
    """
    if fmt == CHAT:
        return "\n".join(str(m.get("content", "")) for m in obj.get("messages", [])
                         if isinstance(m, dict))
    if fmt == PROMPT_COMPLETION:
        return str(obj.get("prompt", "")) + str(obj.get("completion", ""))
    if fmt == TEXT:
        return str(obj.get("text", ""))
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def _unknown_keys(obj: dict, allowed: tuple[str, ...], *, prefix: str) -> list[FieldIssue]:
    return [
        FieldIssue(f"{prefix}{key}", UNKNOWN_FIELD,
                   f"unexpected field {key!r}; allowed: {', '.join(allowed)}")
        for key in obj if key not in allowed
    ]


def _validate_chat(obj: dict) -> list[FieldIssue]:
    messages = obj["messages"]
    if not isinstance(messages, list):
        return [FieldIssue("messages", WRONG_TYPE, "'messages' must be a list of objects")]
    if not messages:
        return [FieldIssue("messages", EMPTY_MESSAGES, "'messages' must not be empty")]
    issues: list[FieldIssue] = []
    # An assistant message with empty content is reported as empty_content; none at all
    # as no_assistant_message.
    assistant_seen = False
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            issues.append(FieldIssue(path, WRONG_TYPE, "each message must be an object"))
            continue
        issues += _unknown_keys(message, _MESSAGE_KEYS, prefix=f"{path}.")
        role = message.get("role")
        if "role" not in message:
            issues.append(FieldIssue(f"{path}.role", MISSING_FIELD, "message has no 'role'"))
        elif not isinstance(role, str) or role not in ROLES:
            issues.append(FieldIssue(
                f"{path}.role", INVALID_ROLE,
                f"role must be one of {', '.join(ROLES)}; got {role!r}",
            ))
        content = message.get("content")
        if "content" not in message:
            issues.append(FieldIssue(f"{path}.content", MISSING_FIELD,
                                     "message has no 'content'"))
            continue
        if not isinstance(content, str):
            issues.append(FieldIssue(f"{path}.content", WRONG_TYPE,
                                     "'content' must be a string"))
            continue
        if role == "assistant":
            assistant_seen = True
            if not content.strip():
                issues.append(FieldIssue(f"{path}.content", EMPTY_CONTENT,
                                         "assistant message has empty content"))
    if not assistant_seen:
        issues.append(FieldIssue(
            "messages", NO_ASSISTANT_MESSAGE,
            "at least one assistant message is needed (only assistant turns are trained)",
        ))
    return issues


def _validate_prompt_completion(obj: dict) -> list[FieldIssue]:
    issues: list[FieldIssue] = []
    if "prompt" not in obj:
        issues.append(FieldIssue("prompt", MISSING_FIELD, "'prompt' is required"))
    elif not isinstance(obj["prompt"], str):
        issues.append(FieldIssue("prompt", WRONG_TYPE, "'prompt' must be a string"))
    if "completion" not in obj:
        issues.append(FieldIssue("completion", MISSING_FIELD, "'completion' is required"))
    elif not isinstance(obj["completion"], str):
        issues.append(FieldIssue("completion", WRONG_TYPE, "'completion' must be a string"))
    elif not obj["completion"].strip():
        issues.append(FieldIssue("completion", EMPTY_COMPLETION,
                                 "'completion' must not be empty"))
    return issues


def _validate_text(obj: dict) -> list[FieldIssue]:
    text = obj["text"]
    if not isinstance(text, str):
        return [FieldIssue("text", WRONG_TYPE, "'text' must be a string")]
    if not text.strip():
        return [FieldIssue("text", EMPTY_TEXT, "'text' must not be empty")]
    return []
