"""Pydantic's validation errors turned into one paragraph for users: the dotted key, what
was wrong, the closest valid key and how to fix it."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from trainpipe.config.schema import RunConfig
from trainpipe.errors import did_you_mean
from trainpipe.registry import Entry


def _valid_keys_at(loc: Sequence[Any]) -> list[str]:
    """Field names of the config model reached by following `loc` from RunConfig."""
    model: Any = RunConfig
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _model_of(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        keys = list(model.model_fields)
        return keys
    return []


def _model_of(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        m = _model_of(arg)
        if m is not None:
            return m
    return None


def explain(
    err: ValidationError,
    data: Any,
    *,
    prefix: str = "",
    valid_keys: list[str] | None = None,
    entry: Entry | None = None,
) -> str:
    lines = []
    for e in err.errors():
        # pydantic reports union members as extra loc parts (e.g. 'list[...]', 'int'); drop them
        parts = [p for p in e["loc"] if isinstance(p, int) or not (
            str(p).startswith(("function-", "dict")) or p in ("int", "float", "str") or "[" in str(p))]
        loc = [str(p) for p in parts]
        # A list item reads model.widths[1]; the value to override is the whole list, model.widths.
        dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in ([prefix] if prefix else []) + parts)
        dotted = dotted.removeprefix(".")
        settable = dotted.split("[", 1)[0]
        kind = e["type"]
        if kind == "extra_forbidden":
            keys = valid_keys if valid_keys is not None else _valid_keys_at(loc[:-1])
            parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
            choices = [f"{parent}.{k}" if parent else k for k in keys]
            owner = f" for {entry.name}" if entry is not None else ""
            hint = did_you_mean(dotted, choices) or "."
            lines.append(
                f"{dotted}: unknown key{owner}{hint} "
                f"Valid keys here: {', '.join(keys) if keys else '(none)'}."
            )
        elif kind == "missing":
            lines.append(f"{dotted}: required key is missing; add it to the config or pass {dotted}=VALUE.")
        else:
            got = e.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) or len(repr(got)) < 80 else type(got).__name__
            msg = e["msg"]
            msg = msg[0].lower() + msg[1:] if msg else msg
            msg = msg.removeprefix("value error, ")
            lines.append(f"{dotted or 'config'}: {msg}; got {shown}. Fix the value in the config or override it with {settable or 'KEY'}=VALUE.")
    if len(lines) > 1:
        return f"{len(lines)} problems in the config: " + " ".join(f"({i + 1}) {l}" for i, l in enumerate(lines))
    return lines[0] if lines else str(err)
