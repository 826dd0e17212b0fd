"""The review page in a real headless browser (Debian's Chromium + chromedriver, driven by Selenium): 5,000 cards
open without fetching 5,000 thumbnails, decisions download as a decisions file, filters, localStorage, bad files.

Chromium and chromedriver are required (``make test`` installs them): without them these tests fail, they do not
skip. Nothing leaves the machine: the page is opened from ``file://`` and Selenium Manager is never asked for a
driver (both paths are given)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from mal_core.data.coco import load_coco
from mal_core.data.decisions import (
    ACCEPTED,
    DECISIONS_FILE,
    NEEDS_FIXING,
    REJECTED,
    decisions_document,
    parse_decisions,
)
from mal_core.engine.review import write_review_page

N_IMAGES, PER_IMAGE = 250, 20  # 5,000 labels
LABELS = "instances_val_mal.json"
CLASSES = ["cup", "dog", "kite"]
INSTALL = ("chromium and chromedriver are needed for the review page's browser tests: install them with "
           "`apt-get install -y chromium chromium-driver` (Debian; `make test` does it)")


def _chromium() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail(f"{INSTALL} (found chromium: {browser}, chromedriver: {driver})")
    return browser, driver


def _flags(ann_id: int) -> list[str]:
    """Deterministic flags: 'empty' on every 37th label, 'partial_box' on every 11th, both on some."""
    return [f for f, every in (("empty", 37), ("partial_box", 11)) if ann_id % every == 0]


@pytest.fixture(scope="module")
def big_page(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A review page of 5,000 labels: 250 small images of 20 boxes each, polygon masks, random scores."""
    root = tmp_path_factory.mktemp("review5k")
    img_dir = root / "images"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(N_IMAGES):
        arr = np.empty((80, 100, 3), np.uint8)  # flat colour bands: quick to encode
        arr[:] = rng.integers(40, 200, 3, dtype=np.uint8)
        arr[20:60, 10:90] = rng.integers(40, 200, 3, dtype=np.uint8)
        Image.fromarray(arr).save(img_dir / f"im{i}.png", compress_level=1)
        images.append({"id": i + 1, "file_name": f"im{i}.png", "height": 80, "width": 100})
        for j in range(PER_IMAGE):
            x, y = float(5 * (j % 5) + 4 * (j // 5)), float(4 * (j // 5) + 3)
            poly = [x + 2, y + 2, x + 30, y + 2, x + 30, y + 24, x + 2, y + 24]
            ann_id = 1000 + i * PER_IMAGE + j
            ann = {"id": ann_id, "image_id": i + 1, "category_id": 1 + ann_id % 3, "bbox": [x, y, 32.0, 26.0],
                   "iscrowd": 0, "segmentation": [poly], "area": 28.0 * 22.0,
                   "score": float(rng.random()), "quality": {"flip": 0.5, "teacher": 0.9}}
            if _flags(ann_id):
                ann["flags"] = _flags(ann_id)
            if ann_id % 2:
                ann["expected_iou"] = 0.5
            anns.append(ann)
    coco_json = {"images": images, "annotations": [{k: v for k, v in a.items() if k not in ("score", "quality")}
                                                   for a in anns],
                 "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}
    (root / "ann.json").write_text(json.dumps(coco_json))
    coco = load_coco(root / "ann.json", img_dir)
    page = write_review_page(coco, anns, root / "review", limit=len(anns), labels_file=LABELS,
                             header_lines=["reviewing the 100 lowest-scored labels raises the expected mean IoU "
                                           "from 0.71 to 0.78"])
    order = [a["id"] for a in sorted(anns, key=lambda a: a["score"])]
    return {"page": page, "anns": {a["id"]: a for a in anns}, "order": order}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebDriver, Path]]:
    """Headless Chromium with downloads going to a temporary folder."""
    chromium, chromedriver = _chromium()
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager, were it ever asked, may not download anything
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver, downloads
    finally:
        driver.quit()


def _wait(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _open(driver: WebDriver, page: Path, fresh: bool = True) -> None:
    """Open the page (with no decisions kept from an earlier test when ``fresh``) and wait until it is built."""
    driver.get(page.as_uri())
    if fresh:
        driver.execute_script("localStorage.clear()")
        driver.refresh()
    _wait("the page to build its cards", lambda: driver.execute_script("return document.body.dataset.ready"))


def _card(driver: WebDriver, ann_id: int) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'.card[data-id="{ann_id}"]')


def _click(driver: WebDriver, ann_id: int, decision: str) -> None:
    card = _card(driver, ann_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
    card.find_element(By.CSS_SELECTOR, f'button[data-d="{decision}"]').click()


def _visible_ids(driver: WebDriver) -> list[int]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.card')].filter(c => !c.hidden && c.offsetParent !== null)"
        ".map(c => +c.dataset.id)")


def _counts(driver: WebDriver) -> dict[str, int]:
    return {k: int(driver.find_element(By.ID, f"count-{k}").text)
            for k in (ACCEPTED, REJECTED, NEEDS_FIXING, "unreviewed")}


def _page_decisions(driver: WebDriver) -> dict[int, str]:
    return {int(k): v for k, v in driver.execute_script(
        "const o = {}; for (const c of document.querySelectorAll('.card[data-decision]')) "
        "o[c.dataset.id] = c.dataset.decision; return o;").items()}


def _download(driver: WebDriver, downloads: Path) -> Path:
    target = downloads / DECISIONS_FILE
    for old in downloads.iterdir():
        old.unlink()
    driver.find_element(By.ID, "download").click()
    _wait(f"{DECISIONS_FILE} to download", lambda: target.is_file() and not list(downloads.glob("*.crdownload")))
    return target


def test_5000_cards_open_without_fetching_every_thumbnail(browser: tuple[WebDriver, Path],
                                                            big_page: dict[str, Any]) -> None:
    driver, _ = browser
    _open(driver, big_page["page"])
    assert driver.execute_script("return document.querySelectorAll('.card').length") == 5000
    assert len(_visible_ids(driver)) == 5000 and driver.find_element(By.ID, "shown").text == "showing 5000 of 5000"
    order = driver.execute_script("return [...document.querySelectorAll('.card')].map(c => +c.dataset.id)")
    assert order == big_page["order"]  # lowest score first
    assert _counts(driver) == {ACCEPTED: 0, REJECTED: 0, NEEDS_FIXING: 0, "unreviewed": 5000}
    assert "from 0.71 to 0.78" in driver.find_element(By.CSS_SELECTOR, "p.note").text
    first = driver.find_element(By.CSS_SELECTOR, ".card img")
    _wait("the first thumbnail", lambda: driver.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth === 160", first))
    requested = driver.execute_script("return document.querySelectorAll('img.thumb[src]').length")
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/thumbs/')).length")
    loaded = driver.execute_script(
        "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
    assert 0 < requested < 300 and fetched <= requested and loaded <= requested, (requested, fetched, loaded)
    last = driver.find_elements(By.CSS_SELECTOR, ".card")[-1]
    last_img = last.find_element(By.TAG_NAME, "img")
    assert not driver.execute_script("return arguments[0].naturalWidth", last_img)
    driver.execute_script("arguments[0].scrollIntoView()", last)
    _wait("the last card's thumbnail", lambda: driver.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth === 160", last_img))
    assert last_img.get_attribute("src").endswith(f"/thumbs/{big_page['order'][-1]}.png")
    assert driver.execute_script("return document.querySelectorAll('img.thumb[src]').length") < 600


def test_decisions_download_as_a_decisions_file(browser: tuple[WebDriver, Path], big_page: dict[str, Any]) -> None:
    driver, downloads = browser
    _open(driver, big_page["page"])
    a, b, c, d, e, f = big_page["order"][:3] + big_page["order"][2500:2502] + big_page["order"][-1:]
    _click(driver, a, ACCEPTED)
    _click(driver, b, REJECTED)
    _click(driver, c, NEEDS_FIXING)
    _click(driver, d, ACCEPTED)
    _click(driver, d, ACCEPTED)  # clicking the active decision clears it
    _click(driver, e, REJECTED)
    _click(driver, e, ACCEPTED)  # another decision replaces it
    assert _card(driver, d).get_attribute("data-decision") is None
    assert _card(driver, e).find_element(By.CSS_SELECTOR, f'button[data-d="{ACCEPTED}"]').get_attribute(
        "aria-pressed") == "true"
    card_f = _card(driver, f)  # the keyboard: f on the focused card, then the focus moves on
    driver.execute_script("arguments[0].focus()", card_f)
    ActionChains(driver).send_keys("f").perform()
    expected = {a: ACCEPTED, b: REJECTED, c: NEEDS_FIXING, e: ACCEPTED, f: NEEDS_FIXING}
    assert _page_decisions(driver) == expected
    assert _counts(driver) == {ACCEPTED: 2, REJECTED: 1, NEEDS_FIXING: 2, "unreviewed": 4995}
    driver.execute_script("arguments[0].focus()", _card(driver, a))
    ActionChains(driver).send_keys("j").perform()  # j: the next card (b)
    assert driver.switch_to.active_element.get_attribute("data-id") == str(b)
    ActionChains(driver).send_keys("r").perform()  # b was rejected: r clears it, the focus stays
    assert b not in _page_decisions(driver) and driver.switch_to.active_element.get_attribute("data-id") == str(b)
    ActionChains(driver).send_keys("r").perform()  # rejected again, and the focus moves on to c
    assert driver.switch_to.active_element.get_attribute("data-id") == str(c)
    ActionChains(driver).send_keys("k").perform()  # k: back to b
    assert driver.switch_to.active_element.get_attribute("data-id") == str(b)
    path = _download(driver, downloads)
    doc = json.loads(path.read_text())
    assert doc == decisions_document(LABELS, expected)
    assert parse_decisions(doc, str(path)) == expected


def test_filters_show_exactly_the_matching_cards(browser: tuple[WebDriver, Path], big_page: dict[str, Any]) -> None:
    driver, _ = browser
    _open(driver, big_page["page"])
    anns = big_page["anns"]
    flag = Select(driver.find_element(By.ID, "f-flag"))
    assert [o.text for o in flag.options] == ["all", "any flag", "no flag", "empty", "partial_box"]
    took = driver.execute_script(
        "const s = document.getElementById('f-flag'), t = performance.now(); s.value = 'f:empty';"
        "s.dispatchEvent(new Event('change')); document.body.offsetHeight; return performance.now() - t;")
    empty = sorted(i for i, a in anns.items() if "empty" in a.get("flags", []))
    assert sorted(_visible_ids(driver)) == empty and len(empty) == 135
    assert driver.find_element(By.ID, "shown").text == f"showing {len(empty)} of 5000"
    assert took < 2000, f"filtering 5,000 cards took {took:.0f} ms"
    shown_card = _card(driver, empty[0])
    assert [s.text for s in shown_card.find_elements(By.CSS_SELECTOR, ".flag")] == _flags(empty[0])
    flag.select_by_visible_text("any flag")
    assert sorted(_visible_ids(driver)) == sorted(i for i, a in anns.items() if a.get("flags"))
    Select(driver.find_element(By.ID, "f-class")).select_by_visible_text("dog")  # class and flag together
    assert sorted(_visible_ids(driver)) == sorted(i for i, a in anns.items() if a.get("flags")
                                                  and a["category_id"] == 2)
    Select(driver.find_element(By.ID, "f-class")).select_by_visible_text("all")
    flag.select_by_visible_text("all")
    order = big_page["order"]
    _click(driver, order[0], REJECTED)
    _click(driver, order[1], REJECTED)
    decision = Select(driver.find_element(By.ID, "f-decision"))
    decision.select_by_value(f"d:{REJECTED}")
    assert sorted(_visible_ids(driver)) == sorted(order[:2])
    _click(driver, order[0], REJECTED)  # cleared: no longer rejected, so filtered out
    assert _visible_ids(driver) == [order[1]]
    decision.select_by_visible_text("unreviewed")
    assert len(_visible_ids(driver)) == 4999 and order[1] not in _visible_ids(driver)
    odd = next(i for i in order if i % 2)  # textContent: an off-screen card's text is not rendered
    assert "expected IoU 0.50" in _card(driver, odd).get_attribute("textContent")
    assert "expected IoU" not in _card(driver, odd + 1).get_attribute("textContent")


def test_decisions_survive_a_reload_and_bad_files_are_refused(browser: tuple[WebDriver, Path],
                                                              big_page: dict[str, Any], tmp_path: Path) -> None:
    driver, downloads = browser
    _open(driver, big_page["page"])
    order = big_page["order"]
    _click(driver, order[0], ACCEPTED)
    _click(driver, order[1], NEEDS_FIXING)
    saved = {order[0]: ACCEPTED, order[1]: NEEDS_FIXING}
    _open(driver, big_page["page"], fresh=False)  # a reload keeps them (localStorage)
    assert _page_decisions(driver) == saved
    assert _counts(driver)[ACCEPTED] == 1 and "restored 2 decisions" in driver.find_element(By.ID, "msg").text
    copy = tmp_path / "other_job" / "review" / "index.html"  # another job's page, same labels file name
    copy.parent.mkdir(parents=True)
    shutil.copy(big_page["page"], copy)
    _open(driver, copy, fresh=False)
    assert _page_decisions(driver) == {} and driver.find_element(By.ID, "msg").text == ""
    _open(driver, big_page["page"], fresh=False)
    upload = driver.find_element(By.ID, "load")
    msg = driver.find_element(By.ID, "msg")
    bad_cases = {"not_json.json": ("{oops", "not JSON"),
                 "wrong_kind.json": (json.dumps({"kind": "coco", "version": 1, "decisions": []}), "not a decisions"),
                 "wrong_version.json": (json.dumps({**decisions_document(LABELS, {}), "version": 9}), "version 9"),
                 "bad_decision.json": (json.dumps({**decisions_document(LABELS, {}), "decisions": [
                     {"id": order[5], "decision": "maybe"}]}), '"maybe"'),
                 "other_labels.json": (json.dumps(decisions_document("other.json", {order[5]: REJECTED})),
                                       "other.json")}
    for name, (text, words) in bad_cases.items():
        (tmp_path / name).write_text(text)
        upload.send_keys(str(tmp_path / name))
        _wait(f"the error for {name}", lambda name=name: name in msg.text)
        assert words in msg.text and msg.get_attribute("class") == "err", msg.text
        assert _page_decisions(driver) == saved  # nothing changed
    good = {order[7]: REJECTED, order[8]: ACCEPTED}
    (tmp_path / "good.json").write_text(json.dumps(decisions_document(LABELS, good)))
    upload.send_keys(str(tmp_path / "good.json"))
    _wait("the good file to load", lambda: "loaded 2 decisions" in msg.text)
    assert msg.get_attribute("class") == "ok" and _page_decisions(driver) == good  # replaces what was there
    _open(driver, big_page["page"], fresh=False)
    assert _page_decisions(driver) == good
    assert parse_decisions(json.loads(_download(driver, downloads).read_text()), "download") == good
