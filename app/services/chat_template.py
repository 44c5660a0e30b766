"""A model's chat template rendered without transformers (jinja2 only, for the API process):
the same text crma_core's data loader gets from `tokenizer.apply_chat_template`.

The environment is the one transformers builds (a sandbox with trim_blocks, lstrip_blocks,
loop controls, `raise_exception`, `strftime_now`, a `tojson` that does not escape HTML), and
the template sees the same variables: the messages, `add_generation_prompt` and the
tokenizer's special tokens (`bos_token`, `eos_token`, ...). A template that refuses a system
message (Gemma-2's raises) gets the system text folded into the next user turn, as
crma_core.data does.

Rendering a conversation costs about as much as counting its tokens, so `ChatRenderer`
renders each *shape* (the sequence of roles) once with stand-in contents and fills the real
contents into the constant text between them. That is exact only for templates that copy a
message's content verbatim, so it is used only for a template whose every use of `content`
is printed as it is (alone or joined with `+`/`~`: `_copies_contents_verbatim`); one that
tests, filters or calls anything on a content (`startswith`, `| trim`, `is string`) is
rendered by jinja for every row. Each shape is also checked with two different stand-ins
(padded with whitespace, so a template that edits contents in a way the first check misses
fails this one), and a shape that fails is rendered by jinja every time."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATE_FILES = ("chat_template.jinja",)
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                      "cls_token", "mask_token")


def _token_text(value: object) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_template(model_dir: Path) -> tuple[str | None, dict[str, str]]:
    """(chat template source or None, special tokens by name) of a Hugging Face directory."""
    config: dict[str, Any] = {}
    path = model_dir / "tokenizer_config.json"
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
    special_map = model_dir / "special_tokens_map.json"
    specials_source = dict(config)
    if special_map.is_file():
        specials_source = {**json.loads(special_map.read_text(encoding="utf-8")), **config}
    specials = {key: text for key in SPECIAL_TOKEN_KEYS
                if (text := _token_text(specials_source.get(key))) is not None}
    template = None
    for name in TEMPLATE_FILES:
        if (model_dir / name).is_file():
            template = (model_dir / name).read_text(encoding="utf-8")
            break
    if template is None and (model_dir / "chat_template.json").is_file():
        template = json.loads((model_dir / "chat_template.json").read_text()).get("chat_template")
    if template is None:
        template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return (template if isinstance(template, str) else None), specials


@lru_cache(maxsize=16)
def _compile(source: str):  # noqa: ANN202 - a jinja2 Template
    return _environment().from_string(source)


@lru_cache(maxsize=1)
def _environment():  # noqa: ANN202 - a jinja2 Environment
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: object, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@lru_cache(maxsize=16)
def _copies_contents_verbatim(source: str) -> bool:
    """Whether every mention of `content` in the template is a message's content printed as
    it is: read by `x['content']` or `x.content` and only joined with `+` or `~` on its way to
    the output. Anything else (a test, a filter, a call, a comparison, a `set`) lets the
    content change the text around it, which stand-ins cannot see."""
    from jinja2 import nodes

    def verbatim(path: list) -> bool:
        *ancestors, node = path
        if not isinstance(node, (nodes.Getitem, nodes.Getattr)):
            return False
        for parent in reversed(ancestors):
            if isinstance(parent, nodes.Output):
                return True
            if not isinstance(parent, (nodes.Add, nodes.Concat)):
                return False
        return False

    def mentions_content(node) -> bool:  # noqa: ANN001
        return (isinstance(node, nodes.Getattr) and node.attr == "content") or \
            (isinstance(node, nodes.Const) and node.value == "content") or \
            (isinstance(node, nodes.Name) and node.name == "content")

    def walk(path: list) -> bool:
        node = path[-1]
        if mentions_content(node):
            target = path[:-1] if isinstance(node, nodes.Const) else path
            if not verbatim(target):
                return False
        return all(walk([*path, child]) for child in node.iter_child_nodes())

    try:
        return walk([_environment().parse(source)])
    except Exception:  # noqa: BLE001 - unparsable here: jinja for every row decides
        return False


def merge_system(messages: list[dict]) -> list[dict]:
    """System messages folded into the next user turn (crma_core.data._merge_system)."""
    merged: list[dict] = []
    pending: list[str] = []
    for message in messages:
        if message["role"] == "system":
            pending.append(message["content"])
        elif pending and message["role"] == "user":
            merged.append({"role": "user", "content": "\n\n".join(pending + [message["content"]])})
            pending = []
        else:
            merged.append(message)
    if pending:
        merged.insert(0, {"role": "user", "content": "\n\n".join(pending)})
    return merged


class _Shape:
    """One role sequence rendered with stand-ins: the constant texts around the contents in
    the whole conversation, in the prompt before its first assistant turn (with the generation
    prompt) and in the conversation up to the end of that turn."""

    def __init__(self, *, full: list[str], prefix: list[str], upto: list[str],
                 first_assistant: int, merged: bool) -> None:
        self.full, self.prefix, self.upto = full, prefix, upto
        self.first_assistant, self.merged = first_assistant, merged


def _stand_in(kind: str, index: int) -> str:
    return f" \n\x01{kind}{index}\x02 \t" if kind == "A" else f"\t\x03{kind}{index}{kind}\x04\n "


class ChatRenderer:
    """`render(messages)` → (text, start, end): the rendered conversation and the characters
    of its first assistant turn (from the end of its generation prompt to the end of the turn
    as rendered, where crma_core's loss mask starts)."""

    def __init__(self, source: str, specials: dict[str, str]) -> None:
        self.template = _compile(source)
        self.specials = specials
        self._stand_ins_work = _copies_contents_verbatim(source)
        self._shapes: dict[tuple[str, ...], _Shape | None] = {}

    def _jinja(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    **self.specials)

    def render_slow(self, messages: list[dict]) -> tuple[str, int, int]:
        """What crma_core.data.chat_spans computes, through jinja every time."""
        try:
            text = self._jinja(messages, add_generation_prompt=False)
        except Exception:  # noqa: BLE001 - jinja's raise_exception surfaces as several types
            messages = merge_system(messages)
            text = self._jinja(messages, add_generation_prompt=False)
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        start = len(self._jinja(messages[:first], add_generation_prompt=True)) if first else 0
        end = len(self._jinja(messages[: first + 1], add_generation_prompt=False))
        return text, start, end

    def render(self, messages: list[dict]) -> tuple[str, int, int]:
        if not self._stand_ins_work:
            return self.render_slow(messages)
        roles = tuple(m["role"] for m in messages)
        shape = self._shapes.get(roles, False)
        if shape is False:
            shape = self._shapes[roles] = self._shape(messages)
        if shape is None:
            return self.render_slow(messages)
        if shape.merged:
            messages = merge_system(messages)
        contents = [m["content"] for m in messages]
        first = shape.first_assistant
        before = sum(map(len, contents[:first]))
        start = sum(map(len, shape.prefix)) + before if first else 0
        end = sum(map(len, shape.upto)) + before + len(contents[first])
        return _fill(shape.full, contents), start, end

    def parts(self, messages: list[dict]) -> tuple[_Shape, list[str]] | None:
        """The conversation's shape and its contents (as the template sees them), whose
        interleaving is `render`'s text; None where `render` goes through jinja."""
        if not self._stand_ins_work:
            return None
        roles = tuple(m["role"] for m in messages)
        shape = self._shapes.get(roles, False)
        if shape is False:
            shape = self._shapes[roles] = self._shape(messages)
        if shape is None:
            return None
        if shape.merged:
            messages = merge_system(messages)
        return shape, [m["content"] for m in messages]

    def _shape(self, messages: list[dict]) -> _Shape | None:
        """The shape of `messages`' roles, or None when stand-ins cannot reproduce it."""
        try:
            return self._build_shape(messages, merged=False)
        except Exception:  # noqa: BLE001 - e.g. a template that refuses the system role
            pass
        try:
            return self._build_shape(merge_system(messages), merged=True)
        except Exception:  # noqa: BLE001 - any surprise: jinja for every row of this shape
            return None

    def _build_shape(self, messages: list[dict], *, merged: bool) -> _Shape | None:
        stand = {kind: [{"role": m["role"], "content": _stand_in(kind, i)}
                        for i, m in enumerate(messages)] for kind in ("A", "B")}
        texts = {kind: self._jinja(stand[kind], add_generation_prompt=False) for kind in stand}
        contents = {kind: [m["content"] for m in stand[kind]] for kind in stand}
        full = _constants(texts["A"], contents["A"])
        if full is None or _fill(full, contents["B"]) != texts["B"]:
            return None
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prefix = [""]
        if first:
            prefix_text = self._jinja(stand["A"][:first], add_generation_prompt=True)
            prefix = _constants(prefix_text, contents["A"][:first])
        upto_text = self._jinja(stand["A"][: first + 1], add_generation_prompt=False)
        upto = _constants(upto_text, contents["A"][: first + 1])
        if prefix is None or upto is None or not texts["A"].startswith(upto_text):
            return None
        return _Shape(full=full, prefix=prefix, upto=upto, first_assistant=first, merged=merged)


def _constants(text: str, contents: list[str]) -> list[str] | None:
    """The constant texts around `contents` as they occur in `text` (each exactly once, in
    order), or None."""
    constants, position = [], 0
    for content in contents:
        found = text.find(content, position)
        if found < 0 or text.count(content) != 1:
            return None
        constants.append(text[position:found])
        position = found + len(content)
    constants.append(text[position:])
    return constants


def _fill(constants: list[str], contents: list[str]) -> str:
    pieces = [constants[0]]
    for content, constant in zip(contents, constants[1:], strict=True):
        pieces += (content, constant)
    return "".join(pieces)
