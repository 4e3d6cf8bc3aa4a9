"""The two shapes of ``/api/create`` (Modelfile up to Ollama 0.5.4, fields from 0.5.5)."""

from __future__ import annotations

from typing import Any

import pytest

from olla.manage.createshape import (
    ShapeError,
    for_version,
    parse_modelfile,
    to_new,
    to_old,
)

DIGEST = "sha256:" + "c" * 64


def test_new_style_as_a_modelfile() -> None:
    """If the ollama SDK's create (from, system, parameters, messages) goes to Ollama 0.5.4,
    then it becomes the Modelfile that says the same, with the name and flags kept."""
    request = {
        "model": "terse:1",
        "from": "smollm2:135m",
        "system": 'Be terse.\nSay "yes" or "no".',
        "template": "{{ .Prompt }}",
        "license": ["MIT", "Apache"],
        "parameters": {"temperature": 0.2, "num_ctx": 2048, "stop": ["<|im_end|>", "###"]},
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "quantize": "q4_K_M",
    }
    assert to_old(request) == {
        "model": "terse:1",
        "stream": True,
        "quantize": "q4_K_M",
        "modelfile": "FROM smollm2:135m\n"
        'TEMPLATE """{{ .Prompt }}"""\n'
        'SYSTEM """Be terse.\nSay "yes" or "no"."""\n'
        'LICENSE """MIT"""\n'
        'LICENSE """Apache"""\n'
        "PARAMETER temperature 0.2\n"
        "PARAMETER num_ctx 2048\n"
        'PARAMETER stop """<|im_end|>"""\n'
        'PARAMETER stop """###"""\n'
        'MESSAGE user """hi"""\n',
    }


def test_uploaded_gguf_as_a_modelfile() -> None:
    """If Open WebUI creates from one uploaded GGUF (files) for Ollama 0.5.4, then the
    Modelfile takes it FROM @digest; adapters become ADAPTER lines."""
    request = {"model": "m", "files": {"m.gguf": DIGEST}, "adapters": {"a.gguf": DIGEST}}
    assert to_old(request)["modelfile"] == f"FROM @{DIGEST}\nADAPTER @{DIGEST}\n"


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        ({"model": "m", "files": {"a": DIGEST, "b": DIGEST}}, "not 2 files"),
        ({"model": "m"}, "not 0 files"),
        ({"model": "m", "from": "x", "system": 'a """ b'}, 'contains """'),
        ({"model": "m", "from": "two words"}, "is not a model name"),
        ({"model": "m", "from": "x", "parameters": []}, "must be an object"),
    ],
)
def test_what_a_modelfile_cannot_say(request_: dict[str, Any], fragment: str) -> None:
    """If a new-style request has no single Modelfile form, then ShapeError says why."""
    with pytest.raises(ShapeError, match=fragment):
        to_old(request_)


def test_modelfile_as_new_style() -> None:
    """If a Modelfile request (the 0.5.4 CLI, older Open WebUI) goes to Ollama 0.5.5 or later,
    then its parts become fields: quoted values across lines, typed parameters, stop as a
    list, messages, an uploaded blob as files."""
    modelfile = (
        "# a comment\n"
        f"FROM @{DIGEST}\n"
        'SYSTEM """Be terse.\n  Always."""\n'
        "TEMPLATE {{ .Prompt }}\n"
        "PARAMETER temperature 0.5\n"
        "PARAMETER num_ctx 4096\n"
        'PARAMETER stop "<|im_end|>"\n'
        "parameter stop stop\n"
        "MESSAGE assistant Hello there\n"
    )
    assert to_new({"model": "m", "modelfile": modelfile, "stream": False}) == {
        "model": "m",
        "stream": False,
        "files": {"model.gguf": DIGEST},
        "system": "Be terse.\n  Always.",
        "template": "{{ .Prompt }}",
        "parameters": {"temperature": 0.5, "num_ctx": 4096, "stop": ["<|im_end|>", "stop"]},
        "messages": [{"role": "assistant", "content": "Hello there"}],
    }


@pytest.mark.parametrize(
    ("modelfile", "fragment"),
    [
        ("FROM ./model.gguf\n", "names a file on the server"),
        ("FROM x\nADAPTER ./lora.gguf\n", "must be an uploaded blob"),
        ('FROM x\nSYSTEM """never closed\n', "unclosed"),
        ("FROM x\nWHATEVER y\n", "unknown Modelfile command"),
        ("SYSTEM hi\n", "no FROM line"),
    ],
)
def test_what_new_style_cannot_say(modelfile: str, fragment: str) -> None:
    """If a Modelfile needs the server's file system or is malformed, then ShapeError."""
    with pytest.raises(ShapeError, match=fragment):
        to_new({"model": "m", "modelfile": modelfile})


def test_round_trip() -> None:
    """If a new-style request is written as a Modelfile and read back, then it is the same."""
    request = {
        "model": "m",
        "from": "base:1",
        "system": "line one\nline two",
        "parameters": {"temperature": 0.7, "stop": ["a", "b"]},
        "messages": [{"role": "user", "content": "x y"}],
    }
    assert to_new(to_old(request)) == request


@pytest.mark.parametrize(
    ("version", "shape"),
    [
        ("0.5.4-ipexllm-20250407", "modelfile"),
        ("0.5.4", "modelfile"),
        ("0.5.5", "from"),
        ("0.12.0", "from"),
        (None, "from"),
    ],
)
def test_for_version(version: str | None, shape: str) -> None:
    """If the target's version is known, then a new-style request reaches a 0.5.4 as a
    Modelfile and a newer one unchanged; an unknown version gets it as sent."""
    request = {"model": "m", "from": "base"}
    assert shape in for_version(request, version)


def test_for_version_old_to_new() -> None:
    """If a Modelfile request goes to a newer Ollama, then it is rewritten; to 0.5.4 it is
    left as it is."""
    request = {"model": "m", "modelfile": "FROM base\n"}
    assert for_version(request, "0.6.0") == {"model": "m", "from": "base"}
    assert for_version(request, "0.5.4") is request


def test_parse_keeps_a_value_on_one_line() -> None:
    """If a parameter's value repeats its name, then the value is still the value."""
    assert parse_modelfile("FROM x\nPARAMETER stop stop\n") == [("from", "x"), ("stop", "stop")]
