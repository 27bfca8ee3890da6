"""The page in a real headless Chromium (Debian's chromium, driven by Playwright), against ``fst app``.

Stylize a photo with a chosen model and get the result back; upload a text file and read
the error; train a tiny style, close the browser mid-run, and find the model afterwards;
and 20 stylize requests at once through the app's API.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from _app_helpers import multi_style_model
from _app_fixtures import *  # noqa: F401,F403 - the app fixtures (a second conftest.py would shadow tests/conftest.py)

TRAIN_TIMEOUT_MS = 240_000
PAGE_TIMEOUT_MS = 60_000


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#stylize-run")
    return page


def choose(page: Any, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    assert page.locator(f"{dropdown} input").input_value() == option


def option_names(page: Any, dropdown: str) -> list[str]:
    page.locator(f"{dropdown} input").click()
    names = [o.get_attribute("aria-label") for o in page.get_by_role("option").all()]
    page.keyboard.press("Escape")
    return names


def test_stylize_a_photo_in_the_page(browser: Any, app_server: Any, app_inputs: dict[str, Path]) -> None:
    page = open_page(browser, app_server.url)
    page.locator("#stylize-input input[type=file]").set_input_files(str(app_inputs["photo"]))
    choose(page, "#stylize-model", "the_wave")
    page.locator("#stylize-run").click()
    link = page.locator("#stylize-results a").first
    link.wait_for()
    href = link.get_attribute("href")
    assert href.endswith("/coffee_the_wave.jpg")
    served_path = Path(href.split("file=", 1)[1])
    assert served_path.resolve().is_relative_to(app_server.data.resolve())  # written in the data folder
    response = page.request.get(href)
    assert response.ok
    result = Image.open(io.BytesIO(response.body())).convert("RGB")
    photo = Image.open(app_inputs["photo"]).convert("RGB")
    assert result.size == photo.size == (128, 85)
    assert np.abs(np.asarray(result, float) - np.asarray(photo, float)).mean() > 10  # stylized, not a copy
    assert page.locator("#stylize-gallery img").count() == 2  # input and result, side by side
    assert "1 photo(s) and 0 clip(s) stylized" in page.locator("#stylize-status").inner_text()
    page.close()


def test_a_text_file_gets_a_clear_error(browser: Any, app_server: Any, app_inputs: dict[str, Path]) -> None:
    page = open_page(browser, app_server.url)
    page.locator("#stylize-input input[type=file]").set_input_files(str(app_inputs["text"]))
    page.locator("#stylize-run").click()
    status = page.locator("#stylize-status .fst-error")
    status.wait_for()
    assert status.inner_text().startswith("error: notes.txt: not a readable image")
    assert page.locator("#stylize-results a").count() == 0
    page.close()


def test_train_a_tiny_style_close_the_browser_and_find_the_model(browser: Any, app_server: Any,
                                                                 app_inputs: dict[str, Path]) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(app_server.url)
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-painting input[type=file]").set_input_files(str(app_inputs["painting"]))
    name_box = page.locator("#train-name textarea, #train-name input").first
    page.wait_for_function("(el) => el.value === 'udnie_small'", arg=name_box.element_handle())  # from the file
    name_box.fill("tiny_browser")
    page.get_by_label("Tiny test", exact=False).check()
    page.locator("#train-start").click()
    page.get_by_text("Started tiny_browser").wait_for()
    page.locator("#train-start").click()  # a second training while one runs: refused, and said so
    page.get_by_text("a training is already running ('tiny_browser'").wait_for()
    context.close()  # the browser goes away mid-run

    page = open_page(browser, app_server.url)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-state[data-state=finished]", timeout=TRAIN_TIMEOUT_MS)
    assert "model tiny_browser is ready" in page.locator("#train-progress").inner_text()
    assert (app_server.models / "tiny_browser.safetensors").is_file()
    page.get_by_role("tab", name="Stylize").click()
    assert "tiny_browser" in option_names(page, "#stylize-model")

    page.get_by_role("tab", name="Models").click()
    choose(page, "#models-pick", "tiny_browser")
    facts = page.locator("#models-facts")
    facts.get_by_text("trained here").wait_for()
    assert "steps: 6" in facts.inner_text() and "last losses: train" in facts.inner_text()
    page.close()

    # The new model stylizes (in a fresh page, as after a restart of the browser).
    page = open_page(browser, app_server.url)
    page.locator("#stylize-input input[type=file]").set_input_files(str(app_inputs["photo"]))
    choose(page, "#stylize-model", "tiny_browser")
    page.locator("#stylize-run").click()
    page.locator("#stylize-results a").first.wait_for()
    assert "coffee_tiny_browser.jpg" in page.locator("#stylize-results a").first.get_attribute("href")
    page.close()


def test_twenty_stylize_requests_at_once(app_server: Any, app_inputs: dict[str, Path], tmp_path: Path) -> None:
    client_module = pytest.importorskip("gradio_client")
    client = client_module.Client(app_server.url, download_files=str(tmp_path), verbose=False)
    photo = client_module.handle_file(str(app_inputs["photo"]))
    blend_weights = [0.0] * 8  # the hidden blend sliders (for multi-style models)
    jobs = [client.submit([photo], None, "udnie", 1.0, False, "original", *blend_weights, api_name="/stylize")
            for _ in range(20)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: job.result(timeout=300), jobs))
    for status, _gallery, _clip, files, _archive in results:
        assert status.strip() == "- 1 photo(s) and 0 clip(s) stylized"
        (path,) = files
        assert Image.open(path).size == (128, 85)
    written = list((app_server.data / "results").glob("*/coffee_udnie.jpg"))
    assert len(written) == 20  # each request wrote its own result folder


def test_blend_the_styles_of_a_multi_style_model(browser: Any, app_server: Any, app_inputs: dict[str, Path]) -> None:
    multi_style_model(app_server.models / "trio.safetensors", ["alpha", "beta", "gamma"])
    page = open_page(browser, app_server.url)
    assert not page.locator("#stylize-blend-0").is_visible()  # a single-style model: no blend box
    page.locator("#stylize-input input[type=file]").set_input_files(str(app_inputs["photo"]))
    choose(page, "#stylize-model", "trio")
    page.locator("#stylize-blend-2").wait_for()
    labels = [page.locator(f"#stylize-blend-{i} [data-testid=block-info]").inner_text() for i in range(3)]
    assert labels == ["alpha", "beta", "gamma"]
    assert not page.locator("#stylize-blend-3").is_visible()

    def stylize(weights: list[str]) -> np.ndarray:
        for i, weight in enumerate(weights):
            box = page.locator(f"#stylize-blend-{i} input[type=number]")
            box.fill(weight)
            box.press("Enter")
        links = page.locator("#stylize-results a")
        before = links.first.get_attribute("href") if links.count() else None
        page.locator("#stylize-run").click()
        page.wait_for_function(
            "(old) => { const a = document.querySelector('#stylize-results a');"
            " return a !== null && a.getAttribute('href') !== old; }", arg=before)  # each request: a new folder
        href = links.first.get_attribute("href")
        return np.asarray(Image.open(io.BytesIO(page.request.get(href).body())).convert("RGB"), float)

    alpha = stylize(["1", "0", "0"])
    gamma = stylize(["0", "0", "1"])
    assert np.abs(alpha - gamma).mean() > 2  # the weights reached the model
    for i in range(3):
        page.locator(f"#stylize-blend-{i} input[type=number]").fill("0")
        page.locator(f"#stylize-blend-{i} input[type=number]").press("Enter")
    page.locator("#stylize-run").click()
    error = page.locator("#stylize-status .fst-error")
    error.wait_for()
    assert "give at least one style a blend weight above 0" in error.inner_text()
    page.close()


def test_the_app_listens_on_loopback_only(app_server: Any) -> None:
    import socket

    port = int(app_server.url.rstrip("/").rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outward interface
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no address besides loopback to try")
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, port), timeout=5).close()
