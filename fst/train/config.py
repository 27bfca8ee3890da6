"""Hydra/OmegaConf plumbing: where configs live, resolvers, and up-front override checks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from fst.errors import FstError
from fst.resources import CONFIG_DIR, PACKAGE_DIR

_GROUP_OVERRIDE = re.compile(r"^[+~]*(?P<group>[a-z_]+)=(?P<values>[^=]*)$")


def register_resolvers() -> None:
    """``${fst_package:}``: the installed package folder, so configs name bundled assets wherever fst is installed."""
    if not OmegaConf.has_resolver("fst_package"):
        OmegaConf.register_new_resolver("fst_package", lambda: str(PACKAGE_DIR))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def check_group_overrides(argv: Sequence[str]) -> None:
    """Fail fast, in one line, on ``group=name`` overrides that name no config.

    Hydra's own message for this spans several lines and hides the useful hint
    (how to train on a painting of your own).
    """
    for arg in argv:
        match = _GROUP_OVERRIDE.match(arg)
        if not match or not (CONFIG_DIR / match["group"]).is_dir():
            continue
        group = match["group"]
        values = re.sub(r"^\w+\((.*)\)$", r"\1", match["values"])  # choice(a,b) sweep syntax
        for value in filter(None, (v.strip() for v in values.split(","))):
            if value != "null" and not (CONFIG_DIR / group / f"{value}.yaml").is_file():
                hint = " (or keep the default and set style.image=/path/to/painting.jpg style.name=NAME)"
                raise FstError(
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
