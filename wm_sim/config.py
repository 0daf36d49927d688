"""Turning `key=value` overrides into a verb's config dataclass, through Hydra's compose API.

Each verb's dataclass (declared next to the code it configures) is the schema and the defaults;
`configs/<verb>.yaml` starts from it, so a team can change a default in one packaged file, and
Hydra's override grammar (lists, quoting, `+key=`) works on the command line. Options that
mean the same in every verb (`threads`) are checked here once, and `check_output_path`
is how a verb refuses an output it could not write before it starts any work.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wm_sim.errors import WmSimError

T = TypeVar("T")

# Options several verbs share with one meaning, and the least value each takes: a torch thread
# count (0: torch's default). Not `seed`: `ros serve seed=-1` means unseeded.
SHARED_MINIMUMS = {"threads": 0}


def load_config(verb: str, schema: type[T], overrides: list[str]) -> T:
    """Compose `configs/<verb>.yaml` over `schema` with `overrides`; returns a `schema` instance.

    A two-word verb's file joins its words with a dash: `ros serve` reads `configs/ros-serve.yaml`.
    An option `schema.RENAMED_OPTIONS` maps to its new name is one error naming the new name.
    """
    file_name = verb.replace(" ", "-")
    ConfigStore.instance().store(name=f"{file_name}_schema", node=schema)
    known = [f.name for f in dataclasses.fields(schema)]
    renamed = getattr(schema, "RENAMED_OPTIONS", {})
    for override in overrides:
        if "=" not in override:
            raise WmSimError(f"expected key=value, got {override!r}; see `wm-sim {verb} --help`")
        path = override.split("=", 1)[0].lstrip("+~")
        if path in renamed:
            raise WmSimError(
                f"option {path} of `wm-sim {verb}` is now called {renamed[path]}: pass {renamed[path]}="
                f"{override.split('=', 1)[1]}"
            )
        key = path.split(".", 1)[0]
        if key not in known:
            hint = "".join(f" (did you mean {group}.{key}?)" for group in _groups_with(schema, key))
            raise WmSimError(
                f"unknown option {key!r} for `wm-sim {verb}`{hint}; valid options: {', '.join(known)}"
            )
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="wm_sim.configs", version_base="1.3"):
            cfg = compose(config_name=file_name, overrides=overrides)
        config = OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise WmSimError(
            f"bad option for `wm-sim {verb}`: {_first_line(exc)}; see `wm-sim {verb} --help`"
        ) from exc
    finally:
        GlobalHydra.instance().clear()
    check_shared_options(verb, config)
    return config


def check_shared_options(verb: str, cfg: Any) -> None:
    """Refuse a shared option below its least value (SHARED_MINIMUMS), naming it."""
    for name, least in SHARED_MINIMUMS.items():
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value < least:
            raise WmSimError(f"{name} must be at least {least} for `wm-sim {verb}`, got {value}")


def check_output_path(path: str | Path, option: str = "out") -> None:
    """Refuse an output directory that exists as a file or cannot be created, before any work.

    Nothing is created: the first existing folder above `path` must be a writable directory.
    """
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise WmSimError(
                f"{option}={path} exists and is a file, not a directory; choose another {option}="
            )
        return
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise WmSimError(f"{option}={path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WmSimError(f"{option}={path} cannot be created: {parent} is not writable")


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _groups_with(schema: type, key: str) -> list[str]:
    """The config groups of `schema` that have an option named `key`."""
    return [
        f.name
        for f in dataclasses.fields(schema)
        if dataclasses.is_dataclass(_default(f)) and key in {g.name for g in dataclasses.fields(_default(f))}
    ]


def describe_options(schema: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of every option of a config dataclass."""
    rows = []
    for f in dataclasses.fields(schema):
        default = _default(f)
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if dataclasses.is_dataclass(default):  # a config group: chosen by name, e.g. model=small
            rows.append((f.name, "group", "<" + f.name + ">", f.metadata.get("help", "")))
            # ...and each of its options settable alone, e.g. training.lr=1e-3
            rows += [(f"{f.name}.{n}", t, d, h) for n, t, d, h in describe_options(type(default))]
            continue
        rows.append((f.name, type_name, default, f.metadata.get("help", "")))
    return rows


def _first_line(exc: BaseException) -> str:
    """The first line of the error and of its cause: Hydra puts the useful half in the cause."""
    parts = []
    while exc is not None and len(parts) < 2:
        text = str(exc).strip().splitlines()
        if text:
            parts.append(text[0].rstrip("."))
        exc = exc.__cause__
    return ": ".join(parts) or "invalid value"
