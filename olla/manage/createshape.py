# -*- test-case-name: tests.test_manage_createshape -*-
"""``/api/create`` in the shape each Ollama takes (pure).

Ollama 0.5.5 replaced the create request. Up to 0.5.4 it is a Modelfile's text
(``{"model", "modelfile"}``); from 0.5.5 on, the Modelfile's parts as fields (``from``,
``files`` and ``adapters`` as file name -> blob digest, ``template``, ``system``, ``license``,
``parameters``, ``messages``) and no Modelfile at all. Clients send either: the ollama SDK 0.6
and Open WebUI the new one, the 0.5.4 CLI and older tools the old one. A fleet may run both
kinds of Ollama, so olla rewrites the request for each target by the version discovery read
(``/api/version``); a target whose version is not known gets the request as it was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from olla.util.versions import version_at_least

#: the first Ollama that takes the new create request (and no longer takes a Modelfile)
NEW_CREATE_API = "0.5.5"
#: request fields both shapes share
_COMMON = ("model", "name", "stream", "quantize", "quantization")
_NEW_FIELDS = ("from", "files", "adapters", "template", "system", "license", "parameters")
#: the blob file names a translated ``FROM @digest`` / ``ADAPTER @digest`` gets
MODEL_FILE = "model.gguf"
ADAPTER_FILE = "adapter.gguf"

Document = dict[str, Any]


class ShapeError(ValueError):
    """The request cannot be said in the shape a target takes."""


def is_old_style(document: Mapping[str, Any]) -> bool:
    return bool(document.get("modelfile")) or bool(document.get("path"))


def is_new_style(document: Mapping[str, Any]) -> bool:
    return any(document.get(key) for key in ("from", "files"))


def for_version(document: Document, version: str | None) -> Document:
    """``document`` as an Ollama of ``version`` takes it (unchanged when it already does, or
    the version is unknown). Raises ``ShapeError``."""
    if version is None:
        return document
    if version_at_least(version, NEW_CREATE_API):
        if is_old_style(document) and not is_new_style(document):
            return to_new(document)
    elif is_new_style(document) and not is_old_style(document):
        return to_old(document)
    return document


# ---------------------------------------------------------------------- new -> Modelfile


def to_old(document: Mapping[str, Any]) -> Document:
    """A new-style request as a Modelfile request."""
    lines: list[str] = []
    source = document.get("from")
    files = document.get("files")
    if source:
        lines.append(f"FROM {_word(source, 'from')}")
    elif isinstance(files, dict) and len(files) == 1:
        (digest,) = files.values()
        lines.append(f"FROM @{_word(digest, 'files')}")
    else:
        count = len(files) if isinstance(files, dict) else 0
        raise ShapeError(
            f"Ollama before {NEW_CREATE_API} creates a model from one GGUF file, not {count} files"
        )
    adapters = document.get("adapters")
    adapters = {} if adapters is None else adapters
    if not isinstance(adapters, dict):
        raise ShapeError("adapters must map file names to blob digests")
    lines += [f"ADAPTER @{_word(digest, 'adapters')}" for digest in adapters.values()]
    for key in ("template", "system"):
        if document.get(key):
            lines.append(f"{key.upper()} {_quote(document[key], key)}")
    licenses = document.get("license")
    for text in licenses if isinstance(licenses, list) else [licenses] if licenses else []:
        lines.append(f"LICENSE {_quote(text, 'license')}")
    parameters = document.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise ShapeError("parameters must be an object")
    for name, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {name} {_parameter(item)}")
    for message in document.get("messages") or []:
        if not isinstance(message, dict):
            raise ShapeError("messages must be objects with role and content")
        lines.append(
            f"MESSAGE {message.get('role')} {_quote(message.get('content', ''), 'messages')}"
        )
    out = {key: document[key] for key in _COMMON if key in document}
    out["modelfile"] = "\n".join(lines) + "\n"
    return out


def _word(value: object, key: str) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ShapeError(f"{key}: {value!r} is not a model name or blob digest")
    return value


def _quote(value: object, key: str) -> str:
    """A Modelfile value in triple quotes (Ollama's parser reads those across lines)."""
    if not isinstance(value, str):
        raise ShapeError(f"{key} must be text")
    if '"""' in value:
        raise ShapeError(f'{key} contains """, which a Modelfile cannot hold')
    return f'"""{value}"""'


def _parameter(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _quote(value, "parameters")


# ---------------------------------------------------------------------- Modelfile -> new


def to_new(document: Mapping[str, Any]) -> Document:
    """A Modelfile request as a new-style one."""
    if document.get("path") and not document.get("modelfile"):
        raise ShapeError(
            f"Ollama {NEW_CREATE_API} and later read no Modelfile path on the server; "
            "send the Modelfile's parts instead"
        )
    out: Document = {key: document[key] for key in _COMMON if key in document}
    parameters: dict[str, Any] = {}
    for command, args in parse_modelfile(str(document.get("modelfile", ""))):
        if command == "from":
            if args.startswith("@"):
                out.setdefault("files", {})[MODEL_FILE] = args[1:]
            elif _is_path(args):
                raise ShapeError(
                    f"FROM {args} names a file on the server; Ollama {NEW_CREATE_API} and "
                    "later take a model from an uploaded blob (FROM @sha256:...)"
                )
            else:
                out["from"] = args
        elif command == "adapter":
            if not args.startswith("@"):
                raise ShapeError(f"ADAPTER {args} must be an uploaded blob (@sha256:...)")
            out.setdefault("adapters", {})[ADAPTER_FILE] = args[1:]
        elif command in ("template", "system"):
            out[command] = args
        elif command == "license":
            out.setdefault("license", []).append(args)
        elif command == "message":
            role, _, content = args.partition(" ")
            out.setdefault("messages", []).append({"role": role, "content": content})
        else:  # a parameter
            value = _typed(args)
            if command == "stop" or command in parameters:
                known = parameters.get(command, [])
                parameters[command] = [*(known if isinstance(known, list) else [known]), value]
            else:
                parameters[command] = value
    if parameters:
        out["parameters"] = parameters
    if not any(out.get(key) for key in ("from", "files")):
        raise ShapeError("the Modelfile has no FROM line")
    return out


def _is_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", "\\")) or value.lower().endswith(
        (".gguf", ".bin", ".safetensors")
    )


def _typed(text: str) -> object:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    return text


_COMMANDS = ("from", "adapter", "template", "system", "license", "message", "parameter")


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """``(command, value)`` pairs of a Modelfile: ``from``, ``adapter``, ``template``,
    ``system``, ``license``, ``message`` (value ``"role content"``) and each parameter by its
    own name. Values may be triple or double quoted (then they may span lines); ``#`` starts a
    comment line. Raises ``ShapeError`` for an unknown command or an unclosed quote."""
    commands: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        line_end = text.find("\n", position)
        line_end = len(text) if line_end < 0 else line_end
        position = _skip_space(text, position, line_end)
        if position >= line_end or text[position] == "#":
            position = line_end + 1
            continue
        word, position = _word_at(text, position, line_end)
        command = word.lower()
        if command not in _COMMANDS:
            raise ShapeError(f"unknown Modelfile command {word!r}")
        prefix = ""
        if command in ("parameter", "message"):
            name, position = _word_at(text, _skip_space(text, position, line_end), line_end)
            if command == "parameter":
                command = name
            else:
                prefix = f"{name} "
        value, position = _value(text, _skip_space(text, position, line_end), line_end)
        commands.append((command, prefix + value))
    return commands


def _skip_space(text: str, position: int, end: int) -> int:
    while position < end and text[position] in " \t\r":
        position += 1
    return position


def _word_at(text: str, position: int, end: int) -> tuple[str, int]:
    start = position
    while position < end and not text[position].isspace():
        position += 1
    return text[start:position], position


def _value(text: str, start: int, line_end: int) -> tuple[str, int]:
    """The value at ``start`` and where the next command may begin."""
    for quote in ('"""', '"'):
        if text.startswith(quote, start):
            close = text.find(quote, start + len(quote))
            if close < 0:
                raise ShapeError(f"an unclosed {quote} in the Modelfile")
            rest = text.find("\n", close)
            return text[start + len(quote) : close], len(text) if rest < 0 else rest + 1
    return text[start:line_end].strip(), line_end + 1
