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
    caption = tiles.first.locator(".caption").inner_text()
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
    page.wait_for_function(f"document.querySelector('#grid .tile')?.dataset.id === '{opened_id}'")
    assert not page.locator("#viewer").evaluate("d => d.open")
    assert page.locator("#grid .tile").first.locator(".caption").inner_text() == "1.000"
    # shown as the photo it is (0.1 put a cryptic `id:698` into the box), with the way back
    assert page.input_value("#q") == "" and page.locator("#image-chip").is_visible()
    assert f"/api/images/{opened_id}/thumbnail" in page.get_attribute("#image-chip img", "src")
    assert page.get_attribute("#image-chip img", "alt") == f"more like {Path(path_text).name}"
    page.go_back()  # to the search the photo was opened from
    page.wait_for_function("document.querySelector('#q').value === 'a dog playing in the park'")
    page.wait_for_function(f"document.querySelector('#grid .tile')?.dataset.id === '{first_id}'")
    assert page.locator("#image-chip").is_hidden()

    # search with an uploaded image: the image itself comes first
    target = photos / PHOTOS[7].name
    page.fill("#q", "")
    page.set_input_files("#upload", str(target))
    page.wait_for_function(
        "!document.querySelector('#image-chip').hidden && "
        "document.querySelector('#status').textContent.includes('image')"
    )
    page.wait_for_function("document.querySelector('#grid .tile .caption')?.textContent === '1.000'")
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


def _first_ids(served, q: str, n: int = 3) -> list[str]:
    _, found = served.json("/api/search", {"q": q, "limit": n})
    return [str(h["id"]) for h in found["results"]]


def _shows(page, q: str, ids: list[str]) -> None:
    """Wait until the box says ``q`` and the grid starts with ``ids``."""
    page.wait_for_function(
        "([q, ids]) => document.querySelector('#q').value === q && "
        "ids.every((id, i) => document.querySelectorAll('#grid .tile')[i]?.dataset.id === id)",
        arg=[q, ids],
    )


def test_back_and_forward_restore_searches_filters_and_the_viewer(browser, gallery):
    """0.1 wrote the address on every search but read it only at load: after a search, Back changed the address
    while the box and the grid stayed."""
    served, _ = gallery
    page, errors = _page(browser, served.url)
    page.wait_for_selector("#grid .tile")
    kitchen, dog = _first_ids(served, "a kitchen"), _first_ids(served, "a dog")
    for q in ("a kitchen", "a dog"):
        page.fill("#q", q)
        page.press("#q", "Enter")
    _shows(page, "a dog", dog)
    page.locator("#grid .tile").nth(1).click()
    page.wait_for_selector("#viewer[open]")
    assert f"view={dog[1]}" in page.url
    page.go_back()  # closes the photo, the results stay
    page.wait_for_function("!document.querySelector('#viewer').open")
    _shows(page, "a dog", dog)
    page.go_back()
    _shows(page, "a kitchen", kitchen)
    page.go_forward()
    _shows(page, "a dog", dog)
    page.go_forward()  # the photo again
    page.wait_for_selector("#viewer[open]")
    assert page.evaluate("state.results[state.current].id") == int(dog[1])
    entries = page.evaluate("history.length")
    page.keyboard.press("Escape")  # closing it is a step back, not a new entry
    page.wait_for_function("!document.querySelector('#viewer').open")
    # history.back() completes after the close event: wait for the address it arrives at, never assume it arrived
    page.wait_for_function("!location.hash.includes('view=') && history.state && history.state.view === undefined")
    assert page.evaluate("history.length") == entries
    page.click("#toggle-filters")
    page.fill("#filters input[name=format]", "png")  # the shared photos are all JPEG: nothing matches
    page.click("#filters button[type=submit]")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('0 images')")
    page.go_back()
    _shows(page, "a dog", dog)
    assert page.input_value("#filters input[name=format]") == ""
    page.reload()  # a reload (or a shared link) shows what the address says
    _shows(page, "a dog", dog)
    assert errors == []


def test_the_phone_layout_swipe_and_accessibility(browser, gallery):
    """0.1 on a 390x844 phone: one column of upscaled 256 px thumbnails (about two photos a screen), a 116 px
    search box, a 26x30 px close target, keyboard hints on a touch screen, no swipe; and axe-core found a page
    without an h1 and role=listitem on <figure>."""
    served, _ = gallery
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=3, is_mobile=True, has_touch=True
    )
    asked: list[str] = []
    page = context.new_page()
    page.on("request", lambda r: asked.append(r.url) if "/thumbnail" in r.url else None)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(served.url)
        page.wait_for_selector("#grid .tile")
        _no_accessibility_violations(page)
        page.fill("#q", "a dog")
        page.press("#q", "Enter")
        _shows(page, "a dog", _first_ids(served, "a dog"))
        assert page.evaluate("columns()") >= 3
        tile = page.locator("#grid .tile").first.bounding_box()
        assert tile is not None and tile["width"] < 140
        assert page.locator("#q").bounding_box()["width"] >= 300
        page.wait_for_function("document.querySelector('#grid .tile img').naturalWidth > 0")
        sizes = {int(u.split("size=")[1]) for u in asked}
        assert min(sizes) >= 3 * tile["width"]  # sharp at the phone's 3 device pixels per CSS pixel
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "gallery-phone.png"))
        page.locator("#grid .tile").first.tap()
        page.wait_for_selector("#viewer[open]")
        close = page.locator("#close").bounding_box()
        assert close is not None and close["width"] >= 44 and close["height"] >= 44
        assert page.locator(".keys").is_hidden() and page.locator(".swipe").is_visible()
        page.wait_for_function("document.querySelector('#large').naturalWidth > 0")
        _no_accessibility_violations(page)
        _swipe(page, "#large", -150)  # right to left: the next photo
        page.wait_for_function("state.current === 1")
        _swipe(page, "#large", 150)
        page.wait_for_function("state.current === 0")
        page.screenshot(path=str(ARTIFACTS / "gallery-phone-viewer.png"))
        assert errors == []
    finally:
        context.close()


def _swipe(page, selector: str, dx: int) -> None:
    """A finger moving sideways across an element, as Chromium's touch input (not synthetic DOM events)."""
    box = page.locator(selector).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for i in range(1, 6):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x + dx * i / 5, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def _no_accessibility_violations(page) -> None:
    """axe-core (the copy axe-playwright-python ships) finds nothing, at any impact."""
    axe = pytest.importorskip("axe_playwright_python")
    page.add_script_tag(path=str(Path(axe.__file__).parent / "axe.min.js"))
    found = page.evaluate("axe.run(document).then(r => r.violations.map(v => [v.id, v.impact, v.nodes.length]))")
    assert found == []


def test_the_desktop_gallery_has_no_accessibility_violations(browser, gallery):
    served, _ = gallery
    page, errors = _page(browser, served.url)
    page.wait_for_selector("#grid .tile")
    _no_accessibility_violations(page)
    page.locator("#grid .tile").first.click()
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("document.querySelector('#large').naturalWidth > 0")
    _no_accessibility_violations(page)
    assert errors == []


def test_new_photos_appear_without_a_reload_and_a_run_shows_its_progress(browser, tmp_path, tiny_embedder, serve_env):
    """Another process indexes while the page is open: its progress shows (in the page and in `imgsearch info`),
    the newest-first grid takes the new photos in by itself, and a search's results offer them instead of moving."""
    import threading

    import imgsearch

    from conftest import run_cli

    photos, coll = tmp_path / "photos", tmp_path / "coll"
    photos.mkdir()
    for src in PHOTOS[:6]:
        shutil.copy(src, photos / src.name)
    with imgsearch.open(coll, embedder=tiny_embedder) as engine:
        engine.index_folder(photos)
    served = Served(coll, env=serve_env)
    try:
        page, errors = _page(browser, served.url)
        page.wait_for_function("document.querySelectorAll('#grid .tile').length === 6")
        page.evaluate("window.notReloaded = true")

        # A run held at its first batch: what it is doing is visible from outside the process.
        for src in PHOTOS[6:10]:
            shutil.copy(src, photos / src.name)
        reached, go_on, failed = threading.Event(), threading.Event(), []

        def progress(done, total, stage):
            if stage == "embedding" and done == 0:
                reached.set()
                go_on.wait(120)

        def index():
            try:
                with imgsearch.open(coll, embedder=tiny_embedder) as engine:
                    engine.index_folder(photos, progress=progress)
            except Exception as exc:  # said by the assertion below, not lost in the thread
                failed.append(exc)
                reached.set()

        writer = threading.Thread(target=index)
        writer.start()
        try:
            assert reached.wait(120) and not failed
            page.wait_for_selector("#indexing:not([hidden])")
            assert page.inner_text("#indexing span") == "Indexing 0 of 4 photos in photos"
            _, updates = served.json("/api/updates")
            assert (updates["indexing"]["done"], updates["indexing"]["total"]) == (0, 4)
            info = run_cli("info", "--collection", coll, env=serve_env)
            assert f"indexing    0 of 4 images under {photos.resolve()} (embedding;" in info.stdout, info.stdout
            page.screenshot(path=str(ARTIFACTS / "gallery-indexing.png"))
        finally:
            go_on.set()
            writer.join()
        assert not failed
        page.wait_for_function("document.querySelectorAll('#grid .tile').length === 10")
        page.wait_for_selector("#indexing", state="hidden")
        assert served.json("/api/updates")[1]["indexing"] is None
        assert "indexing" not in run_cli("info", "--collection", coll, env=serve_env).stdout

        # Search results stay put; the page offers the new photos, and shows them when asked.
        page.fill("#q", "a dog playing in the park")
        page.press("#q", "Enter")
        page.wait_for_function("document.querySelector('#status').textContent.includes('a dog playing')")
        for src in PHOTOS[10:12]:
            shutil.copy(src, photos / src.name)
        with imgsearch.open(coll, embedder=tiny_embedder) as engine:
            engine.index_folder(photos)
        page.wait_for_selector("#fresh:not([hidden])")
        assert page.inner_text("#fresh") == "2 new photos · show"
        assert page.locator("#grid .tile").count() == 10
        page.click("#fresh")
        page.wait_for_function("document.querySelectorAll('#grid .tile').length === 12")
        assert page.is_hidden("#fresh")
        assert page.evaluate("window.notReloaded") is True
        assert errors == []
    finally:
        served.stop()
