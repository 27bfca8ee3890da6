"""The ``fst`` command and the one wrapper every fst command runs under.

``fst COMMAND ...`` dispatches to the library's entry points; each command's module is
imported only when it runs, so ``fst stylize`` never loads Hydra or Lightning.
:func:`run_command` turns an :class:`~fst.errors.FstError` into one ``error: ...``
line with exit 1, a :class:`~fst.errors.UsageError` (or an argparse error) into one
line with exit 2, and Ctrl-C into exit 130.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from fst.errors import EXIT_OK, EXIT_USAGE, ArgumentParser, run_command  # noqa: F401 - ArgumentParser re-exported

# command -> (module:function taking argv and returning an exit status, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("fst.train.run:main", "train a style network (Hydra overrides: style=..., data.root=...)"),
    "stylize": ("fst.infer.cli:main", "stylize photos with a trained model (same as fst-infer)"),
    "export": ("fst.train.export:main", "convert a checkpoint or model file to safetensors/ONNX/TorchScript"),
    "weights": ("fst.loss.weights:main", "fetch and cache the VGG16 loss-network weights ahead of time"),
    "shards": ("fst.data.shards:main", "pack a photo folder or zip into webdataset shards"),
    "sweep-report": ("fst.sweep.report:main", "rebuild the contact sheet and table of a finished sweep"),
    "add-style": ("fst.train.add_style:main", "train one more style into a multi-style model, the others untouched"),
    "quality": ("fst.research.quality:main", "measure a model (colour, contrast, structure, blobs, loss) beside a peer and Gatys"),
    "optimize": ("fst.research.optimize:main", "stylize one photo by optimising its pixels (Gatys et al.) under a model's loss"),
    "app": ("fst.app.cli:main", "serve a web page to stylize photos and clips and train new styles (needs fst[app])"),
}


def _load(target: str) -> Callable[[list[str] | None], int | None]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "usage: fst COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines) + "\n\n`fst COMMAND --help` for each one."


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return EXIT_OK if args else EXIT_USAGE
    if args[0] == "--version":
        from fst import __version__

        print(f"fst {__version__}")
        return EXIT_OK
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    if command == "train":
        # Hydra reads sys.argv itself, and Lightning re-runs the command line for each DDP
        # rank: both work as they do for `python -m fst.train`, which this becomes.
        os.execv(sys.executable, [sys.executable, "-m", "fst.train", *rest])
    return run_command(_load(COMMANDS[command][0]), rest)


def console_main() -> NoReturn:
    """``fst``."""
    sys.exit(main())


def stylize_main() -> NoReturn:
    """``fst-infer``: the same as ``fst stylize``."""
    sys.exit(run_command(_load(COMMANDS["stylize"][0])))


if __name__ == "__main__":
    console_main()
