import subprocess
import sys

import pytest

from crma_core import formats as F


def codes(obj):
    return [(i.field, i.code) for i in F.detect_and_validate(obj)[1]]


def test_valid_examples_of_each_format():
    chat = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}]}
    assert F.detect_and_validate(chat) == ("chat", [])
    assert F.detect_and_validate({"prompt": "", "completion": "x"}) == ("prompt_completion", [])
    assert F.detect_and_validate({"text": "abc"}) == ("text", [])


@pytest.mark.parametrize("obj", [[1, 2], "text", 3, None])
def test_non_object(obj):
    assert F.detect_and_validate(obj) == (None, [F.FieldIssue("", "not_an_object",
                                                              "each line must be a JSON object")])


def test_unknown_and_ambiguous_format():
    assert codes({"foo": 1}) == [("", "unknown_format")]
    fmt, issues = F.detect_and_validate({"text": "a", "prompt": "b", "completion": "c"})
    assert fmt is None and [i.code for i in issues] == ["ambiguous_format"]


def test_chat_issue_paths():
    obj = {"messages": [{"role": "user", "content": "hi", "name": "x"},
                        {"role": "robot", "content": "a"},
                        {"content": "a"},
                        {"role": "assistant"},
                        {"role": "assistant", "content": 3},
                        "nope"],
           "extra": True}
    fmt, issues = F.detect_and_validate(obj)
    assert fmt == "chat"
    assert [(i.field, i.code) for i in issues] == [
        ("extra", "unknown_field"),
        ("messages[0].name", "unknown_field"),
        ("messages[1].role", "invalid_role"),
        ("messages[2].role", "missing_field"),
        ("messages[3].content", "missing_field"),
        ("messages[4].content", "wrong_type"),
        ("messages[5]", "wrong_type"),
        ("messages", "no_assistant_message"),
    ]


def test_chat_assistant_rules():
    assert codes({"messages": []}) == [("messages", "empty_messages")]
    assert codes({"messages": "hi"}) == [("messages", "wrong_type")]
    assert codes({"messages": [{"role": "user", "content": "q"}]}) == [
        ("messages", "no_assistant_message")]
    assert codes({"messages": [{"role": "user", "content": "q"},
                               {"role": "assistant", "content": "  "}]}) == [
        ("messages[1].content", "empty_content")]


def test_prompt_completion_rules():
    assert codes({"prompt": "p"}) == [("completion", "missing_field")]
    assert codes({"completion": "c"}) == [("prompt", "missing_field")]
    assert codes({"prompt": 1, "completion": ""}) == [("prompt", "wrong_type"),
                                                      ("completion", "empty_completion")]
    assert codes({"prompt": "p", "completion": "c", "id": 3}) == [("id", "unknown_field")]


def test_text_rules():
    assert codes({"text": ""}) == [("text", "empty_text")]
    assert codes({"text": ["a"]}) == [("text", "wrong_type")]


def test_example_text():
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert F.example_text(chat, "chat") == "a\nb"
    assert F.example_text({"prompt": "p ", "completion": "c"}, "prompt_completion") == "p c"
    assert F.example_text({"text": "t"}, "text") == "t"
    with pytest.raises(ValueError):
        F.example_text({}, "yaml")


def test_codes_are_snake_case_and_exported():
    assert F.MIXED_FORMATS == "mixed_formats"
    for code in F.ISSUE_CODES:
        assert code.islower() and " " not in code


def test_formats_and_catalog_do_not_import_torch():
    code = ("import sys, crma_core, crma_core.formats, crma_core.catalog; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
