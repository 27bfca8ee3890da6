"""The page: three tabs (Stylize, Train, Models) built with Gradio Blocks around the app's services.

Imported only by ``fst app`` once Gradio is known to be installed and its upload folder
is set (:mod:`fst.app.cli`). The handlers here turn page inputs into calls to
:mod:`fst.app.stylizing`, :mod:`fst.app.training` and :mod:`fst.app.catalog`, and their
results or :class:`~fst.errors.FstError` messages back into page updates.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from fst.errors import FstError
from fst.infer.backends import available_models

from fst.app.catalog import ModelCard, list_cards, sample_output, style_thumbnail
from fst.app.store import AppData
from fst.app.stylizing import Limits, ModelCache, Options, StylizeResult, style_names, stylize_uploads
from fst.app.training import SCHEDULES, Schedule, TrainingManager, TrainingStatus

# Sliders for blending the styles of a multi-style model (the first ones shown, if it has more).
MAX_BLEND_SLIDERS = 8
SIZE_CHOICES = [("Original (within the pixel limit)", "original"), ("512 px", "512"), ("1024 px", "1024"),
                ("2048 px", "2048")]
POLL_S = 1.0
PREFERRED_MODEL = "starry_night"
CSS = """
.fst-progress progress { width: 100%; height: 1.1em; }
.fst-progress .fst-state { font-weight: 600; }
.fst-error { color: #b91c1c; }
"""


@dataclass
class AppConfig:
    """Everything the page needs besides Gradio: the data folder, the limits, the schedules offered."""

    data: AppData
    limits: Limits = field(default_factory=Limits)
    schedules: dict[str, Schedule] = field(default_factory=lambda: dict(SCHEDULES))
    stylize_workers: int = 2


def model_names() -> list[str]:
    return sorted(available_models())


def default_model(names: list[str]) -> str | None:
    return PREFERRED_MODEL if PREFERRED_MODEL in names else (names[0] if names else None)


def _message(lines: list[str], errors: list[str]) -> str:
    out = [f"- {html.escape(line)}" for line in lines]
    out += [f'- <span class="fst-error">error: {html.escape(line)}</span>' for line in errors]
    return "\n".join(out)


def _uploads(files: list[str] | None, webcam: str | None) -> list[tuple[str, str]]:
    found = [(path, Path(path).name) for path in (files or [])]
    if webcam:
        found.append((webcam, f"webcam-{time.strftime('%H%M%S')}.png"))
    return found


def progress_html(status: TrainingStatus) -> str:
    """The Train tab's progress block: state, a progress bar, step, loss, time left."""
    record = status.record
    if record is None:
        return '<div class="fst-progress" id="train-state" data-state="idle">No training yet.</div>'
    state, name = record["state"], html.escape(record["name"])
    progress = status.progress
    step, max_steps = progress.get("step"), progress.get("max_steps") or record.get("max_steps")
    parts = [f'<span class="fst-state">{html.escape(state)}</span>: <b>{name}</b> '
             f'({html.escape(record.get("schedule", ""))})']
    if step is not None and max_steps:
        bar = f'<progress value="{step}" max="{max_steps}"></progress>'
        parts.append(f"step {step} of {max_steps}")
        if progress.get("loss") is not None:
            parts.append(f"loss {progress['loss']:.3f}")
        if progress.get("val_loss") is not None:
            parts.append(f"validation loss {progress['val_loss']:.3f}")
        if status.active and progress.get("s_per_step"):
            left = max(0, max_steps - step) * progress["s_per_step"]
            parts.append(f"{progress['s_per_step']:.2f} s/step, about {_duration(left)} left")
    else:
        bar = '<progress max="1"></progress>' if status.active else ""
        if status.active:
            parts.append("starting: loading the loss network and the photos")
    if state == "finished":
        parts.append(f"model <b>{name}</b> is ready: pick it on the Stylize tab")
    if record.get("error"):
        parts.append(f'<span class="fst-error">{html.escape(record["error"])}</span>')
    return (f'<div class="fst-progress" id="train-state" data-state="{html.escape(state)}">{bar}'
            f"<div>{' · '.join(parts)}</div></div>")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def card_markdown(card: ModelCard) -> str:
    rows = "\n".join(f"- **{label}**: {html.escape(value)}" for label, value in card.facts())
    return f"### {card.name}\n\n{rows}"


def cards_table(cards: list[ModelCard]) -> str:
    lines = ["| model | style | source | steps | training time | photos |", "|---|---|---|---|---|---|"]
    for card in cards:
        facts = dict(card.facts())
        lines.append(f"| {card.name} | {html.escape(card.style_name)} | {html.escape(card.source)} | "
                     f"{facts['steps']} | {facts['training time']} | {html.escape(facts['photos'])} |")
    return "\n".join(lines)


def build(config: AppConfig) -> gr.Blocks:
    """The Blocks of the page (not launched)."""
    data, limits = config.data, config.limits
    models = ModelCache()
    trainer = TrainingManager(data, config.schedules)
    trainer.reconcile()
    names = model_names()

    # --- handlers ---------------------------------------------------------------------------------

    def describe_model(model: str | None) -> list[Any]:
        hidden = [gr.Accordion(visible=False)] + [gr.Slider(visible=False) for _ in range(MAX_BLEND_SLIDERS)]
        if not model:
            return ["No model installed.", *hidden]
        try:
            stylizer = models.get(model)
        except FstError as exc:
            return [f'<span class="fst-error">error: {html.escape(str(exc))}</span>', *hidden]
        styles = style_names(stylizer)
        info = f"Style: **{html.escape(stylizer.style)}**"
        steps = (stylizer.metadata.get("training") or {}).get("steps", stylizer.metadata.get("steps"))
        if steps:
            info += f", trained for {steps} steps"
        if not styles:
            return [info, *hidden]
        shown = styles[:MAX_BLEND_SLIDERS]
        if len(styles) > MAX_BLEND_SLIDERS:
            info += f" ({len(styles)} styles: the first {MAX_BLEND_SLIDERS} can be blended here)"
        sliders = [gr.Slider(label=s, value=1.0 if i == 0 else 0.0, visible=True) for i, s in enumerate(shown)]
        sliders += [gr.Slider(visible=False, value=0.0) for _ in range(MAX_BLEND_SLIDERS - len(shown))]
        return [info, gr.Accordion(visible=True), *sliders]

    def run_stylize(files: list[str] | None, webcam: str | None, model: str | None, strength: float,
                    preserve_color: bool, size: str, *weights: float, progress: gr.Progress = gr.Progress()) -> list[Any]:
        """Stylize the uploaded photos and clips (and the webcam shot) with one model."""
        nothing = [[], gr.Video(value=None, visible=False), None, gr.DownloadButton(visible=False)]
        if not model:
            return [_message([], ["choose a model"]), *nothing]
        style: dict[str, float] | None = None
        try:
            stylizer = models.get(model)
            styles = style_names(stylizer)[:MAX_BLEND_SLIDERS]
            if styles:
                style = {s: float(w) for s, w in zip(styles, weights) if w and float(w) > 0}
                if not style:
                    raise FstError("give at least one style a blend weight above 0")
            options = Options(model=model, strength=float(strength), preserve_color=bool(preserve_color),
                              size=None if size in (None, "", "original") else int(size), style=style)
            result = stylize_uploads(_uploads(files, webcam), options, data, models, limits,
                                     progress=lambda fraction, desc: progress(fraction, desc=desc))
        except FstError as exc:
            return [_message([], [str(exc)]), *nothing]
        return _stylize_outputs(result)

    def _stylize_outputs(result: StylizeResult) -> list[Any]:
        done = [f"{len(result.pairs)} photo(s) and {len(result.clips)} clip(s) stylized"] if result.outputs else []
        gallery: list[tuple[str, str]] = []
        for preview, out, caption in result.pairs:
            gallery += [(str(preview), caption.split(" → ")[0]), (str(out), caption)]
        clip = gr.Video(value=str(result.clips[0]), visible=True) if result.clips else gr.Video(value=None, visible=False)
        archive = (gr.DownloadButton(value=str(result.archive), visible=True) if result.archive
                   else gr.DownloadButton(visible=False))
        return [_message(done + result.notes, result.errors), gallery, clip,
                [str(p) for p in result.outputs] or None, archive]

    def painting_uploaded(painting: str | None, name: str) -> list[Any]:
        if not painting:
            return [None, name, ""]
        from fst.app.training import read_painting

        label = Path(painting).name
        try:
            read_painting(painting, label)
        except FstError as exc:
            return [None, name, f'<span class="fst-error">error: {html.escape(str(exc))}</span>']
        suggested = name or "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(label).stem)[:48]
        return [painting, suggested, ""]

    def start_training(painting: str | None, name: str, schedule: str) -> str:
        try:
            record = trainer.start(painting, Path(painting).name if painting else "", name, schedule)
        except FstError as exc:
            return f'<span class="fst-error">error: {html.escape(str(exc))}</span>'
        return (f"Started **{html.escape(record['name'])}** ({html.escape(record['schedule_label'])}). "
                "It runs on its own: closing this page does not stop it.")

    def cancel_training() -> str:
        record = trainer.cancel()
        if record is None:
            return "No training is running."
        return f"Cancelling **{html.escape(record['name'])}**."

    def poll(known: list[str], shown_preview: str | None) -> list[Any]:
        status = trainer.status()
        current = model_names()
        preview = str(status.preview) if status.preview else None
        stamp = f"{preview}@{Path(preview).stat().st_mtime_ns}" if preview and Path(preview).exists() else None
        preview_update = gr.skip() if stamp == shown_preview else (preview or None)
        if current != known:
            choices = [gr.Dropdown(choices=current), gr.Dropdown(choices=current)]
        else:
            choices = [gr.skip(), gr.skip()]
        return [progress_html(status), preview_update, status.log_tail, *choices, current, stamp]

    def show_card(model: str | None) -> list[Any]:
        cards = list_cards(data, trainer.finished_records())
        table = cards_table(cards)
        card = next((c for c in cards if c.name == model), None)
        if card is None:
            return [None, None, None, "Pick a model.", table]
        try:
            photo, sample = sample_output(card, data, models)
        except FstError as exc:
            photo, sample = None, None
            card.error = str(exc)
        return [style_thumbnail(card, data), photo, sample, card_markdown(card), table]

    # --- the page ---------------------------------------------------------------------------------

    first = default_model(names)
    with gr.Blocks(title="fst: fast style transfer", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown("## fst: fast style transfer\nStylize photos and clips with a trained style, or train a new "
                    "style from a painting, on this computer.")
        known = gr.State(names)
        shown_preview = gr.State(None)
        with gr.Tabs():
            with gr.Tab("Stylize", id="stylize"):
                with gr.Row():
                    with gr.Column(scale=3):
                        files = gr.File(label="Photos or clips (several at once; drop them here)",
                                        file_count="multiple", elem_id="stylize-input")
                        with gr.Accordion("Or take a photo with the webcam", open=False):
                            webcam = gr.Image(label="Webcam", sources=["webcam"], type="filepath", height=260,
                                              elem_id="stylize-webcam")
                    with gr.Column(scale=2):
                        # Custom values: the list grows while the page is open (trained models); names are checked.
                        model = gr.Dropdown(choices=names, value=first, label="Model", allow_custom_value=True,
                                            elem_id="stylize-model")
                        model_info = gr.Markdown(elem_id="stylize-model-info")
                        with gr.Accordion("Style blend", visible=False) as blend_box:
                            sliders = [gr.Slider(0.0, 1.0, value=0.0, step=0.05, visible=False, label=f"style {i + 1}",
                                                 elem_id=f"stylize-blend-{i}") for i in range(MAX_BLEND_SLIDERS)]
                        strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Strength",
                                             info="0: the photo, 1: the full style", elem_id="stylize-strength")
                        preserve = gr.Checkbox(label="Preserve the photo's colours", elem_id="stylize-preserve")
                        size = gr.Dropdown(SIZE_CHOICES, value="original", label="Output size (long side)",
                                           elem_id="stylize-size")
                        run = gr.Button("Stylize", variant="primary", elem_id="stylize-run")
                stylize_status = gr.Markdown(elem_id="stylize-status")
                gallery = gr.Gallery(label="Input and result, side by side", columns=4, height="auto",
                                     object_fit="contain", elem_id="stylize-gallery")
                clip = gr.Video(label="Stylized clip", visible=False, elem_id="stylize-clip")
                with gr.Row():
                    results = gr.File(label="Results (download one)", file_count="multiple", interactive=False,
                                      elem_id="stylize-results")
                    archive = gr.DownloadButton("Download all (zip)", visible=False, elem_id="stylize-zip")
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    with gr.Column(scale=2):
                        painting = gr.File(label="Painting", file_count="single", elem_id="train-painting")
                        name = gr.Textbox(label="Name of the new style", placeholder="letters, digits, _ and -",
                                          elem_id="train-name")
                        schedule = gr.Radio([(s.label, s.key) for s in config.schedules.values()],
                                            value=next(iter(config.schedules)), label="Schedule",
                                            elem_id="train-schedule")
                        with gr.Row():
                            start = gr.Button("Start training", variant="primary", elem_id="train-start")
                            cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
                        train_message = gr.Markdown(elem_id="train-message")
                    with gr.Column(scale=3):
                        painting_view = gr.Image(label="Painting", interactive=False, height=260,
                                                 elem_id="train-painting-view")
                state = gr.HTML(progress_html(trainer.status()), elem_id="train-progress")
                preview = gr.Image(label="Preview: validation photos (top) and the network's output (bottom)",
                                   interactive=False, elem_id="train-preview")
                with gr.Accordion("Training log", open=False):
                    log = gr.Textbox(lines=12, max_lines=12, show_label=False, elem_id="train-log")
                gr.Markdown("Trains on the photos bundled with fst, on the CPU. The model goes to the models "
                            "folder under its name, where the Stylize tab, `fst stylize -m NAME` and "
                            "`fst-infer -m NAME` find it.")
            with gr.Tab("Models", id="models"):
                with gr.Row():
                    pick = gr.Dropdown(choices=names, value=first, label="Model", allow_custom_value=True,
                                       elem_id="models-pick", scale=4)
                    refresh = gr.Button("Refresh", scale=1, elem_id="models-refresh")
                with gr.Row():
                    style_image = gr.Image(label="Style image", interactive=False, height=300,
                                           elem_id="models-style")
                    sample_in = gr.Image(label="Photo", interactive=False, height=300, elem_id="models-photo")
                    sample_out = gr.Image(label="Sample output", interactive=False, height=300,
                                          elem_id="models-sample")
                facts = gr.Markdown(elem_id="models-facts")
                gr.Markdown("#### Installed models")
                table = gr.Markdown(elem_id="models-table")
        timer = gr.Timer(POLL_S)

        blend_outputs = [model_info, blend_box, *sliders]
        model.change(describe_model, model, blend_outputs, api_visibility="private")
        demo.load(describe_model, model, blend_outputs, api_visibility="private")
        run.click(run_stylize, [files, webcam, model, strength, preserve, size, *sliders],
                  [stylize_status, gallery, clip, results, archive], api_name="stylize",
                  concurrency_limit=config.stylize_workers, concurrency_id="stylize")
        painting.upload(painting_uploaded, [painting, name], [painting_view, name, train_message],
                        api_visibility="private")
        start.click(start_training, [painting, name, schedule], train_message, api_name="train",
                    concurrency_limit=1)
        cancel.click(cancel_training, None, train_message, api_name="cancel", concurrency_limit=1)
        timer.tick(poll, [known, shown_preview], [state, preview, log, model, pick, known, shown_preview],
                   api_visibility="private", concurrency_limit=4, concurrency_id="poll", show_progress="hidden")
        card_outputs = [style_image, sample_in, sample_out, facts, table]
        pick.change(show_card, pick, card_outputs, api_visibility="private", concurrency_limit=2)
        refresh.click(show_card, pick, card_outputs, api_visibility="private", concurrency_limit=2)
        demo.load(show_card, pick, card_outputs, api_visibility="private")
    return demo


def launch(config: AppConfig, host: str, port: int | None, open_browser: bool = False,
           block: bool = True, max_upload: str | None = None) -> tuple[gr.Blocks, str]:
    """Serve the page on ``host:port``; returns (the Blocks, the local URL). Blocks unless ``block`` is False."""
    gr.set_static_paths([str(config.data.results), str(config.data.samples)])
    demo = build(config)
    demo.queue(max_size=200)
    _, url, _ = demo.launch(server_name=host, server_port=port, inbrowser=open_browser, prevent_thread_lock=True,
                            show_error=True, quiet=True, ssr_mode=False, max_file_size=max_upload,
                            allowed_paths=[str(config.data.root)], theme=gr.themes.Soft(), css=CSS,
                            footer_links=["api"])
    print(f"fst app: serving {url} (data folder {config.data.root}); Ctrl-C stops it", flush=True)
    if block:
        demo.block_thread()
    return demo, url
