"""The web gallery in a real headless Chromium (Debian's package, driven by Playwright): type a query and see
thumbnails, open one, "more like this", search with an uploaded image, keyboard navigation, the empty state.
Screenshots are saved as artefacts in tests/artifacts/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import COCO_MINI, Served, index_captioned

pytestmark = pytest.mark.e2e  # real processes, browsers or clusters: the end-to-end tier

ARTIFACTS = Path(__file__).parent / "artifacts"
BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
PHOTOS = sorted((COCO_MINI / "val2017").glob("*.jpg"))[:24]


def _chromium() -> str:
    found = next((b for b in BROWSERS if Path(b).exists()), None)
    if found is None:
        pytest.skip("no chromium: `apt-get install -y chromium` (scripts/setup.sh does it when run as root)")
    return found


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, tiny_embedder, coco_captions, serve_env):
    if not PHOTOS:
        pytest.skip(f"shared photos not found under {COCO_MINI}")
    root = tmp_path_factory.mktemp("gallery")
    photos = root / "photos"
    photos.mkdir()
    for src in PHOTOS:
        shutil.copy(src, photos / src.name)
    index_captioned(root / "coll", photos, tiny_embedder, coco_captions, [p.name for p in PHOTOS])
    served = Served(root / "coll", env=serve_env)
    yield served, photos
    served.stop()


def _page(browser, url: str, on_request=None):
    """A page at ``url``; ``on_request`` sees every request from the first (it is attached before the page loads)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if on_request is not None:
        page.on("request", on_request)
    page.goto(url)
    return page, errors


def _loaded_thumbnails(page) -> int:
    return page.evaluate(
        "[...document.querySelectorAll('#grid .tile img')].filter(i => i.complete && i.naturalWidth > 0).length"
    )


def test_search_open_more_like_this_and_upload(browser, gallery):
    served, photos = gallery
    page, errors = _page(browser, served.url)
    page.wait_for_selector("#grid .tile")  # the newest images before any query
    page.fill("#q", "a dog playing in the park")
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelector('#status').textContent.includes('a dog playing')")
    tiles = page.locator("#grid .tile")
    assert tiles.count() == len(PHOTOS)
    page.wait_for_function(
        "[...document.querySelectorAll('#grid .tile img')].slice(0, 8).every(i => i.complete && i.naturalWidth > 0)"
    )
    first_id = tiles.first.get_attribute("data-id")
    _, api = served.json("/api/search", {"q": "a dog playing in the park", "limit": 5})
    assert [tiles.nth(i).get_attribute("data-id") for i in range(5)] == [str(h["id"]) for h in api["results"]]
    caption = tiles.first.locator("figcaption").inner_text()
    assert caption == f"{api['results'][0]['score']:.3f}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gallery-search.png"))

    tiles.nth(2).click()
    page.wait_for_selector("#viewer[open]")
    opened_id = tiles.nth(2).get_attribute("data-id")
    path_text = page.inner_text("#meta-path")
    assert path_text.startswith(str(photos))
    assert "×" in page.inner_text("#meta")  # dimensions
    page.wait_for_function("document.querySelector('#large').naturalWidth > 0")
    assert not page.locator("#describe").is_hidden()
    page.click("#describe")
    page.wait_for_selector("#texts li")
    assert page.locator("#texts li").count() == 5
    page.screenshot(path=str(ARTIFACTS / "gallery-viewer.png"))
    page.click("#more")
    page.wait_for_function(
        f"document.querySelector('#q').value === 'id:{opened_id}' && "
        f"document.querySelector('#grid .tile')?.dataset.id === '{opened_id}'"
    )
    assert not page.locator("#viewer").evaluate("d => d.open")
    assert page.locator("#grid .tile").first.locator("figcaption").inner_text() == "1.000"

    # search with an uploaded image: the image itself comes first
    target = photos / PHOTOS[7].name
    page.fill("#q", "")
    page.set_input_files("#upload", str(target))
    page.wait_for_function(
        "!document.querySelector('#image-chip').hidden && "
        "document.querySelector('#status').textContent.includes('image')"
    )
    page.wait_for_function("document.querySelector('#grid .tile figcaption')?.textContent === '1.000'")
    top = page.locator("#grid .tile").first
    assert top.get_attribute("title") == str(target)
    page.screenshot(path=str(ARTIFACTS / "gallery-upload.png"))
    assert errors == [] and first_id


def test_keyboard_navigation(browser, gallery):
    served, _ = gallery
    page, errors = _page(browser, served.url)
    page.wait_for_selector("#grid .tile")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("kitchen")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#status').textContent.includes('kitchen')")
    page.keyboard.press("ArrowDown")  # from the box into the grid
    assert page.evaluate("document.activeElement.dataset.index") == "0"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.index") == "2"
    columns = page.evaluate("columns()")
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.dataset.index") == str(2 + columns)
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open]")
    shown = page.inner_text("#meta-path")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.querySelector('#meta-path').textContent !== {json.dumps(shown)}")
    assert page.evaluate("state.current") == 3 + columns
    page.keyboard.press("Escape")
    page.wait_for_function("!document.querySelector('#viewer').open")
    assert errors == []


@pytest.fixture(scope="module")
def big_gallery(tmp_path_factory, tiny_embedder, serve_env):
    """More photos than two pages hold (150: pages of 60), for paging as a user scrolls."""
    import imgsearch

    many = sorted((COCO_MINI / "val2017").glob("*.jpg"))[:150]
    if len(many) < 150:
        pytest.skip(f"150 shared photos needed under {COCO_MINI}")
    root = tmp_path_factory.mktemp("big_gallery")
    photos = root / "photos"
    photos.mkdir()
    for src in many:
        shutil.copy(src, photos / src.name)
    with imgsearch.open(root / "coll", embedder=tiny_embedder) as engine:
        engine.index_folder(photos)
    served = Served(root / "coll", env=serve_env)
    yield served
    served.stop()


def test_paging_loads_a_page_at_a_time_as_the_user_scrolls(browser, big_gallery):
    """The grid holds one page (60) until the user scrolls near its end, then the next, and stops at the last;
    thumbnails load lazily, so a big collection never fetches thousands of images at once."""
    asked: list[str] = []
    page, errors = _page(browser, big_gallery.url, lambda r: asked.append(r.url) if "/api/images?" in r.url else None)
    page.wait_for_selector("#grid .tile")
    tiles = "document.querySelectorAll('#grid .tile').length"
    assert page.evaluate(tiles) == 60
    assert page.evaluate("[...document.querySelectorAll('#grid .tile img')].every(i => i.loading === 'lazy')")
    for shown in (120, 150):
        # One jump to the end: one scroll event, which the page's own listener answers with one page.
        page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
        page.wait_for_function(f"{tiles} >= {shown}")
        assert page.evaluate(tiles) == shown
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('150 images')")
    assert [u.split("offset=")[1].split("&")[0] for u in asked] == ["0", "60", "120"]  # none after the last page
    assert page.evaluate(tiles) == 150 and errors == []


def test_a_missing_collection_explains_itself(browser, tmp_path):
    (tmp_path / "nothing-here").mkdir()
    served = Served(tmp_path / "nothing-here")
    try:
        page, errors = _page(browser, served.url)
        page.wait_for_selector("#notice:not([hidden])")
        text = page.inner_text("#notice")
        assert "No collection yet" in text and "imgsearch index" in text
        page.screenshot(path=str(ARTIFACTS / "gallery-missing.png"))
        assert errors == []
    finally:
        served.stop()
