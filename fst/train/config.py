"""Hydra/OmegaConf plumbing: where configs live, resolvers, up-front override checks, and
instantiation that lets fst's own errors through."""

from __future__ import annotations

import re
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import OmegaConf

from fst.errors import FstError, UsageError
from fst.resources import CONFIG_DIR, PACKAGE_DIR

__all__ = ["CONFIG_DIR", "check_group_overrides", "group_options", "instantiate", "parse_override",
           "quote_braced_values", "register_resolvers"]


def register_resolvers() -> None:
    """``${fst_package:}``: the installed package folder, so configs name bundled assets wherever
    fst is installed; ``${fst_stem:PATH}``: a file's name without folder and suffix, so a style
    given as ``style.image=mine.jpg`` is called ``mine`` unless ``style.name`` says otherwise."""
    if not OmegaConf.has_resolver("fst_package"):
        OmegaConf.register_new_resolver("fst_package", lambda: str(PACKAGE_DIR))
    if not OmegaConf.has_resolver("fst_stem"):
        OmegaConf.register_new_resolver("fst_stem", _file_stem)


def _file_stem(path: str) -> str:
    return Path(str(path)).stem


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising an :class:`FstError` from the target as itself.

    Hydra wraps whatever a target raises in an InstantiationException (a multi-line
    message naming the target); a user-facing FstError should reach the user as one line.
    """
    try:
        return hydra.utils.instantiate(config, *args, **kwargs)
    except HydraException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, FstError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def parse_override(text: str) -> Override | None:
    """One command-line override as Hydra parses it, or None for what is not an override."""
    if text.startswith("-"):
        return None
    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except HydraException:  # also Hydra flags' values (--cfg job) and glob sweeps
        return None


def check_group_overrides(argv: Sequence[str]) -> None:
    """Fail fast, in one line, on ``group=name`` overrides that name no config (a UsageError).

    Hydra's own message for this spans several lines and hides the useful hint
    (how to train on a painting of your own).
    """
    for arg in argv:
        override = parse_override(arg)
        if override is None or override.is_delete() or override.package is not None:
            continue
        group = override.key_or_group
        # hydra/...: Hydra's own groups, which its plugins extend (hydra/launcher=joblib).
        if group.split("/")[0] == "hydra" or not (CONFIG_DIR / group).is_dir():
            continue
        values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        for value in values:
            if value is not None and value != "null" and not (CONFIG_DIR / group / f"{value}.yaml").is_file():
                hint = " (or keep the default and set style.image=/path/to/painting.jpg style.name=NAME)"
                raise UsageError(
                    f"unknown {group} '{value}': choose one of {', '.join(group_options(group))}"
                    + (hint if group == "style" else "")
                )


_BRACED_VALUE = re.compile(r"^(?P<key>[+~]*[\w.@/-]+)=(?P<value>[^'\"{\[].*[{}].*)$")


def quote_braced_values(argv: Sequence[str]) -> list[str]:
    """``data.shards=/d/train-{000000..000118}.tar`` -> ``data.shards='/d/train-{...}.tar'``.

    Hydra's override grammar rejects unquoted braces, and the quotes a user types for
    the shell never reach it; brace patterns (webdataset shard lists) are quoted here.
    Values that start with a quote, ``{`` or ``[`` (dicts, lists) or hold ``${`` are kept.
    """
    quoted = []
    for arg in argv:
        match = _BRACED_VALUE.match(arg)
        if match and "${" not in match["value"] and "'" not in match["value"]:
            arg = f"{match['key']}='{match['value']}'"
        quoted.append(arg)
    return quoted
