"""``fst app``: serve the web page on this computer (127.0.0.1 unless ``--host`` says otherwise).

Needs the ``app`` extra (``pip install 'fst[app]'``: Gradio). Gradio is imported only here,
after its upload folder has been pointed into the app's data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from fst.errors import ArgumentParser, FstError

from fst.app.store import AppData, default_data_dir
from fst.app.stylizing import DEFAULT_MAX_CLIP_SIDE, DEFAULT_MAX_PIXELS, DEFAULT_REFUSE_PIXELS, Limits

INSTALL_HINT = "the web app needs Gradio: pip install 'fst[app]'"


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="fst app", description="Serve fst's web page: stylize, blend, and train a new style.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this computer only; 0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: the first free one from 7860)")
    p.add_argument("--data", type=Path, default=None,
                   help=f"the app's data folder: uploads, results, training runs (default: {default_data_dir()})")
    p.add_argument("--max-pixels", type=float, default=DEFAULT_MAX_PIXELS,
                   help="photos over this many pixels are scaled down to it before stylizing (default: %(default).0f)")
    p.add_argument("--refuse-pixels", type=float, default=DEFAULT_REFUSE_PIXELS,
                   help="photos over this many pixels are refused unread (default: %(default).0f)")
    p.add_argument("--max-clip-side", type=int, default=DEFAULT_MAX_CLIP_SIDE,
                   help="clips are stylized with their long side at most this (default: %(default)s)")
    p.add_argument("--max-upload", default="2gb", help="largest upload accepted (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2,
                   help="stylize requests handled at once (forward passes take turns); more wait in a queue "
                        "(default: %(default)s)")
    p.add_argument("--test-schedule", action="store_true",
                   help="also offer a tiny training schedule that ends in seconds (for checking a set-up)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        raise FstError(f"--port must be between 1 and 65535, got {args.port}")
    if args.workers < 1:
        raise FstError(f"--workers must be at least 1, got {args.workers}")
    if not 0 < args.max_pixels <= args.refuse_pixels:
        raise FstError("--max-pixels must be positive and at most --refuse-pixels")
    data = AppData.at(args.data)
    # Read by Gradio when it is imported: uploads land in the data folder.
    os.environ["GRADIO_TEMP_DIR"] = str(data.uploads)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise FstError(INSTALL_HINT) from None
    from fst.app.server import AppConfig, launch
    from fst.app.training import SCHEDULES, TINY

    schedules = dict(SCHEDULES)
    if args.test_schedule:
        schedules[TINY.key] = TINY
    config = AppConfig(data=data, schedules=schedules, stylize_workers=args.workers,
                       limits=Limits(int(args.max_pixels), int(args.refuse_pixels), args.max_clip_side))
    try:
        launch(config, args.host, args.port, open_browser=args.open, max_upload=args.max_upload)
    except OSError as exc:
        raise FstError(f"cannot serve on {args.host}:{args.port or 'any port'} ({exc})") from None
    return 0
