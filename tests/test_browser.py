"""A real browser against the real server on loopback: upload a Corel photo, see neighbours, click one;
review duplicate groups and resolve them.

Needs Debian's chromium (.ci/run installs it). Elsewhere the test skips, saying so; under CI it fails
instead, so CI can never pass it by skipping. A screenshot is saved to test-artifacts/ on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import simsearch
from simsearch.config import Settings
from simsearch.embedder import HubEmbedder
from simsearch.server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def need_chromium() -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser test")
        pytest.skip("chromium not installed (apt-get install chromium)")


@contextmanager
def serving(store: simsearch.Store) -> Iterator[str]:
    """The app under uvicorn on loopback; searches by URL may reach it (the photos it serves are on loopback)."""
    need_chromium()
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store, allow_private_urls=True), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
           tiny_embedder: HubEmbedder) -> Iterator[str]:
    need_chromium()  # before asking for the photos or indexing 1000 of them
    corel_images: Path = request.getfixturevalue("corel_images")
    store = simsearch.open(tmp_path_factory.mktemp("browser") / "store", model=tiny_embedder, settings=Settings(), create=True)
    store.index(corel_images)
    with serving(store) as url:
        yield url
    store.close()


@contextmanager
def browser_page(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A phone-sized page in headless Chromium; a screenshot goes to test-artifacts/ if the test fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        try:
            yield page
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_upload_shows_neighbours_and_click_searches_again(server: str, corel_images: Path,
                                                          request: pytest.FixtureRequest) -> None:
    from playwright.sync_api import expect

    probe = corel_images / "q_0.jpg"
    with browser_page(request) as page:
        page.goto(server)
        expect(page.locator("#stats")).to_contain_text("1000 photos indexed")
        page.set_input_files("#file", str(probe))
        hits = page.locator("#results .hit")
        expect(hits).to_have_count(20, timeout=30_000)
        expect(hits.nth(0).locator(".path")).to_have_attribute("title", str(probe))  # the whole path
        expect(hits.nth(0).locator(".path")).to_have_text(f"images/{probe.name}")  # shown from its folder's name
        first_thumb = hits.nth(0).locator("img")
        first_thumb.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first_thumb.element_handle())

        clicked = hits.nth(3).locator(".path").inner_text()
        hits.nth(3).locator(".like").click()
        expect(hits.nth(0).locator(".path")).to_have_text(clicked, timeout=30_000)
        expect(hits).to_have_count(20)
        expect(page.locator("#status")).to_contain_text("photos like")

        # refine it: a second example, then a photo of what is not wanted; the page shows what the API answers
        first = re.search(r"like=(\d+)", page.url).group(1)
        hits.nth(4).locator(".add").click()
        expect(page.locator("#status")).to_contain_text("and 1 more example", timeout=30_000)
        second = re.search(r"like=\d+(?:%2C|,)(\d+)", page.url).group(1)
        both = page.request.get(f"{server}/api/query?id={first}&id={second}&k=20").json()
        expect(hits.nth(0).locator(".path")).to_have_attribute("title", both[0]["path"])
        assert _titles(hits) == [h["path"] for h in both]
        unwanted = hits.nth(2).locator(".path").get_attribute("title")
        hits.nth(2).locator(".less").click()
        expect(page.locator("#status")).to_contain_text("less like 1 photo", timeout=30_000)
        not_id = next(h["id"] for h in both if h["path"] == unwanted)
        pushed = page.request.get(f"{server}/api/query?id={first}&id={second}&not={not_id}&k=20").json()
        expect(hits.nth(0).locator(".path")).to_have_attribute("title", pushed[0]["path"])
        assert _titles(hits) == [h["path"] for h in pushed]
        page.go_back()  # each refinement is an address of its own
        expect(page.locator("#status")).not_to_contain_text("less like", timeout=30_000)

        # the API docs render from files the server holds (this machine reaches no CDN)
        page.goto(f"{server}/docs")
        expect(page.locator(".swagger-ui .title")).to_contain_text("simsearch", timeout=30_000)
        expect(page.locator(".opblock-summary-path").first).to_be_visible()


def test_the_collection_shows_on_arrival_and_every_view_is_an_address(server: str, request: pytest.FixtureRequest) -> None:
    from playwright.sync_api import expect

    with browser_page(request) as page:
        page.goto(server)
        expect(page.locator("#stats")).to_contain_text("1000 photos indexed")
        cards = page.locator("#results .hit")
        expect(cards).to_have_count(60, timeout=30_000)  # the first page of the collection, no query needed
        expect(page.locator("#status")).to_contain_text("1000 photos, newest first")
        cards.nth(59).scroll_into_view_if_needed()
        expect(cards).to_have_count(120, timeout=30_000)  # the next page, as one scrolls
        clicked = cards.nth(5).locator(".path").inner_text()
        cards.nth(5).locator(".like").click()
        expect(page).to_have_url(re.compile(r"/\?like=\d+&k=20$"))
        expect(cards).to_have_count(20, timeout=30_000)
        expect(cards.nth(0).locator(".path")).to_have_text(clicked)
        expect(page.locator("#status")).to_contain_text(f"photos like {clicked}")
        shown = cards.locator(".path").all_inner_texts()

        shared = page.context.browser.new_page()  # the address alone, in a fresh page, brings the same view back
        shared.goto(page.url)
        expect(shared.locator("#results .hit")).to_have_count(20, timeout=30_000)
        expect(shared.locator("#results .hit").nth(0).locator(".path")).to_have_text(clicked)
        assert shared.locator("#results .hit .path").all_inner_texts() == shown

        page.evaluate("""async () => {  // paste an image, as Ctrl+V of a copied photo does
            const blob = await (await fetch(document.querySelector("#results .hit img").src)).blob();
            const data = new DataTransfer();
            data.items.add(new File([blob], "pasted.jpg", { type: "image/jpeg" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true }));
        }""")
        expect(page.locator("#status")).to_contain_text("photos like pasted.jpg", timeout=30_000)
        expect(cards).to_have_count(20)
        image = page.evaluate("document.querySelector('#results .hit img').src")  # a photo's web address
        page.fill("#url", image)
        page.locator("#url-form button").click()
        expect(page.locator("#status")).to_contain_text(f"photos like {image}", timeout=30_000)
        expect(cards).to_have_count(20)

        page.go_back()  # back to the collection, not off the page
        expect(page).to_have_url(server + "/")
        expect(page.locator("#status")).to_contain_text("newest first")
        expect(cards).to_have_count(60, timeout=30_000)

        second = cards.nth(1).locator(".path").get_attribute("title")  # the large view, by keyboard
        cards.nth(0).locator("img").press("Enter")  # focusable, and Enter opens it
        viewer = page.locator("#viewer")
        expect(viewer).to_be_visible()
        expect(page.locator("#view-path")).to_have_text(cards.nth(0).locator(".path").get_attribute("title"))
        page.wait_for_function("() => { const i = document.querySelector('#view-img'); return i.complete && i.naturalWidth > 0 }")
        page.keyboard.press("ArrowRight")
        expect(page.locator("#view-path")).to_have_text(second)
        expect(page.locator("#view-count")).to_have_text("2 of 60")
        page.keyboard.press("Escape")
        expect(viewer).to_be_hidden()
        cards.nth(1).locator("img").click()
        page.locator("#view-like").click()  # "more like this" from the large view
        expect(page).to_have_url(re.compile(r"like=\d+"))
        expect(cards.nth(0).locator(".path")).to_have_attribute("title", second, timeout=30_000)


def _titles(cards: Any) -> list[str]:
    """The whole paths of the cards shown (each shows its path from its indexed folder's name on)."""
    return cards.locator(".path").evaluate_all("els => els.map((e) => e.title)")


def test_filter_chips_narrow_browsing_and_results_alike(tmp_path: Path, corel_images: Path, tiny_embedder: HubEmbedder,
                                                       request: pytest.FixtureRequest) -> None:
    from PIL import Image
    from playwright.sync_api import expect

    root = tmp_path / "photos"
    for folder, names in (("a", ("db_1.jpg", "db_120.jpg", "db_250.jpg", "db_400.jpg")), ("b", ("db_500.jpg", "db_600.jpg"))):
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(corel_images / name, root / folder / name)
    for name in ("db_700", "db_800"):
        Image.open(corel_images / f"{name}.jpg").save(root / "b" / f"{name}.png")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store, serving(store) as url, \
            browser_page(request) as page:
        store.index(root)
        page.goto(f"{url}/?folder={root / 'a'}")
        cards, chips = page.locator("#results .hit"), page.locator("#chips .chip")
        expect(cards).to_have_count(4, timeout=30_000)  # browsing, narrowed to the folder
        expect(chips).to_have_text([f"folder: {root / 'a'} ×"])
        cards.nth(1).locator(".like").click()
        expect(page).to_have_url(re.compile(r"like=\d+"))
        expect(page.locator("#status")).to_contain_text("4 photos like")  # k is 20: the filter, not k, bounds it
        assert all(p.startswith(str(root / "a")) for p in _titles(cards))
        assert all(p.startswith("photos/a/") for p in cards.locator(".path").all_inner_texts())  # what differs
        chips.first.click()  # removing the chip widens the same search
        expect(chips).to_have_count(0)
        expect(page.locator("#status")).to_contain_text("8 photos like", timeout=30_000)
        page.locator("#filters summary").click()
        page.select_option("#filter-form select[name=format]", "PNG")
        page.locator("#filter-form button[type=submit]").click()
        expect(chips).to_have_text(["format: PNG ×"])
        expect(page.locator("#status")).to_contain_text("2 photos like", timeout=30_000)
        page.locator("#to-collection").click()  # browsing keeps the filter in force
        expect(page.locator("#status")).to_contain_text("2 photos, newest first", timeout=30_000)
        assert sorted(Path(p).name for p in cards.locator(".path").all_inner_texts()) == ["db_700.png", "db_800.png"]

        # a limit in pixels, as the CLI takes it (2M); when it leaves nothing, the page says which filter did
        page.evaluate("document.getElementById('filters').open = true")
        page.fill("#filter-form input[name=min_pixels]", "2M")
        page.locator("#filter-form button[type=submit]").click()
        expect(page).to_have_url(re.compile(r"min_pixels=2M"))
        expect(page.locator("#status")).to_contain_text('without "pixels at least: 2M" 2 photos would match',
                                                        timeout=30_000)
        expect(page.locator("#status")).to_contain_text('without "format: PNG" 0 photos would match')
        # the folder filter offers the subfolders that hold photos, not only the indexed folder
        options = page.locator("#folder-list option").evaluate_all("els => els.map((e) => e.value)")
        assert {str(root / "a"), str(root / "b"), str(root)} <= set(options)
        page.goto(f"{url}/?mp=0.05")  # an address from before: megapixels become the one unit
        expect(page).to_have_url(re.compile(r"min_pixels=0.05M"))
        expect(page.locator("#status")).to_contain_text("8 photos, newest first", timeout=30_000)

        expect(page.locator("#stats")).to_contain_text("8 photos indexed · 1 failed")
        page.locator("#to-failures").click()  # the failures view: each file with its reason
        failure = page.locator("#failure-list li")
        expect(failure).to_have_count(1, timeout=30_000)
        expect(failure.locator(".path")).to_have_text(str(root / "b" / "broken.jpg"))
        expect(failure.locator(".reason")).not_to_be_empty()
        reason = store.failures()[0].reason
        expect(failure.locator(".reason")).to_contain_text(reason)


def test_review_page_resolves_duplicate_groups(tmp_path: Path, corel_images: Path, tiny_embedder: HubEmbedder,
                                              request: pytest.FixtureRequest) -> None:
    from PIL import Image
    from playwright.sync_api import expect

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("db_1.jpg", "db_120.jpg", "db_250.jpg", "db_400.jpg"):
        shutil.copy(corel_images / name, folder / name)
    Image.open(folder / "db_1.jpg").resize((192, 128)).save(folder / "db_1-small.jpg", quality=80)
    Image.open(folder / "db_120.jpg").transpose(Image.Transpose.ROTATE_90).save(folder / "db_120-turned.jpg")
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store, serving(store) as url, \
            browser_page(request) as page:
        store.index(folder)
        page.goto(f"{url}/#duplicates")
        groups = page.locator("#groups .group")
        expect(groups).to_have_count(2, timeout=30_000)
        small = page.locator(".group", has=page.locator(".path", has_text="db_1-small.jpg"))
        expect(small.locator(".member.keep .path")).to_have_text(str(folder / "db_1.jpg"))  # the larger one
        expect(small.locator(".member", has_text="db_1-small.jpg").locator(".why")).to_contain_text("resized")
        small.locator(".not-duplicates").click()
        expect(page.locator("#dup-status")).to_contain_text("marked as not duplicates")
        turned = page.locator(".group", has=page.locator(".path", has_text="db_120-turned.jpg"))
        expect(turned.locator(".why").first).to_contain_text("rotated")
        page.locator("#trash").check()  # moving photos to the trash asks first; saying no changes nothing
        asked: list[str] = []
        page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
        turned.locator(".member", has_text="db_120-turned.jpg").locator(".keep-this").click()
        expect(page.locator("#dup-status")).to_contain_text("nothing changed")
        assert len(asked) == 1 and "trash" in asked[0]
        page.locator("#trash").uncheck()
        turned.locator(".member", has_text="db_120-turned.jpg").locator(".keep-this").click()
        expect(page.locator("#dup-status")).to_contain_text("keeping")
        expect(groups).to_have_count(0)
        page.locator("#undo").click()  # a decision can be taken back: the group is listed again
        expect(page.locator("#dup-status")).to_contain_text("taken back", timeout=30_000)
        expect(groups).to_have_count(1)
        turned.locator(".member", has_text="db_120-turned.jpg").locator(".keep-this").click()
        expect(page.locator("#dup-status")).to_contain_text("keeping")
        expect(groups).to_have_count(0)
        page.reload()
        expect(page.locator("#dup-status")).to_contain_text("no duplicates left to review", timeout=30_000)
        page.locator("#to-similar").click()  # look-alikes: their own tab, and no trash offered there
        expect(page.locator("#similar-note")).to_be_visible()
        expect(page.locator("#trash-choice")).to_be_hidden()
        expect(page.locator("#dup-status")).to_contain_text("look-alikes", timeout=30_000)
        expect(page.locator("#to-similar")).to_have_class("on")
    with simsearch.open(tmp_path / "store") as reopened:  # the decisions are in the catalog
        assert reopened.duplicates() == []
        assert {g.resolution for g in reopened.duplicates(include_resolved=True)} == {"not-duplicates", "keep"}
        assert (folder / "db_1-small.jpg").exists() and (folder / "db_120.jpg").exists()  # nothing deleted


def test_review_page_keeps_ticked_photos_splits_and_resolves_the_sure_groups(
        tmp_path: Path, corel_images: Path, tiny_embedder: HubEmbedder, home_trash: Path,
        request: pytest.FixtureRequest) -> None:
    """Per-photo choices: keep two of three with the rest to the (real, freedesktop) trash after a
    confirmation that names it, then undo; split a group; the sure groups in one go."""
    from PIL import Image
    from playwright.sync_api import expect

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("db_1.jpg", "db_250.jpg", "db_400.jpg", "db_600.jpg"):
        shutil.copy(corel_images / name, folder / name)
    Image.open(folder / "db_1.jpg").resize((192, 128)).save(folder / "db_1-small.jpg", quality=80)  # sure: resized
    for src in ("db_250", "db_600"):  # two groups of three: resized + recompressed, each needs a look
        Image.open(folder / f"{src}.jpg").save(folder / f"{src}-q30.jpg", quality=30)
        Image.open(folder / f"{src}.jpg").resize((288, 192)).save(folder / f"{src}-small.jpg", quality=90)
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store, serving(store) as url, \
            browser_page(request) as page:
        store.index(folder)
        page.goto(f"{url}/#duplicates")
        groups = page.locator("#groups .group")
        expect(groups).to_have_count(3, timeout=30_000)
        expect(page.locator("#resolve-sure")).to_have_text("keep the suggested photo of the 1 sure group")

        trio = page.locator(".group", has=page.locator(".path", has_text="db_250-q30.jpg"))
        trio.locator(".member", has_text="db_250-small.jpg").locator(".keep-box").check()  # the keeper is ticked
        page.locator("#trash").check()
        asked: list[str] = []
        page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
        trio.locator(".keep-ticked").click()
        expect(page.locator("#dup-status")).to_contain_text("1 other moved to the trash")
        assert "move 1 photo to the trash" in asked[0] and str(folder / "db_250-q30.jpg") in asked[0]
        assert not (folder / "db_250-q30.jpg").exists() and (folder / "db_250-small.jpg").exists()
        assert (home_trash / "files" / "db_250-q30.jpg").exists()
        page.locator("#undo").click()
        expect(page.locator("#dup-status")).to_contain_text("put back from the trash", timeout=30_000)
        assert (folder / "db_250-q30.jpg").exists()
        expect(groups).to_have_count(3)

        other = page.locator(".group", has=page.locator(".path", has_text="db_600-q30.jpg"))
        other.locator(".member", has_text="db_600-small.jpg").locator(".keep-box").check()  # with db_600.jpg
        other.locator(".split").click()
        expect(page.locator("#dup-status")).to_contain_text("split")
        expect(groups).to_have_count(3)  # db_600 + its small copy; the q30 copy alone is no group
        expect(page.locator(".group", has=page.locator(".path", has_text="db_600-q30.jpg"))).to_have_count(0)
        expect(page.locator("#resolve-sure")).to_contain_text("2 sure groups")  # the part left is a resized pair

        page.locator("#trash").uncheck()
        page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
        page.locator("#resolve-sure").click()
        expect(page.locator("#dup-status")).to_contain_text("resolved 2 groups", timeout=30_000)
        assert "2 groups" in asked[-1] and "trash" not in asked[-1]
        expect(groups).to_have_count(1)
        expect(page.locator("#resolve-sure")).to_be_hidden()
        assert (folder / "db_1-small.jpg").exists()  # without the box nothing moves
    with simsearch.open(tmp_path / "store") as reopened:
        assert {g.resolution for g in reopened.duplicates(include_resolved=True)} == {None, "keep"}


def test_the_search_box_finds_photos_by_label(tmp_path: Path, corel_images: Path, tiny_module: Path,
                                              classifier_module: Path, request: pytest.FixtureRequest) -> None:
    """A word in the box: the photos of that label, most probable first, as the store ranks them; a typo is
    answered with suggestions; the header says the store has labels."""
    from playwright.sync_api import expect

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(1, 9):
        shutil.copy(corel_images / f"db_{i * 90}.jpg", folder / f"db_{i * 90}.jpg")
    with simsearch.open(tmp_path / "store", model=tiny_module, classifier=classifier_module, create=True) as store, \
            serving(store) as url, browser_page(request) as page:
        store.index(folder, labels=True)
        word = store.labels_of(1, k=1)[0].name
        want = [h.path for h in store.query(label=word, k=20)]
        page.goto(url)
        expect(page.locator("#stats")).to_contain_text("labels on 8 photos", timeout=30_000)
        page.locator("#label").fill(word)
        page.locator("#label-form button").click()
        expect(page.locator("#status")).to_contain_text(f'photos of "{word}", most probable first', timeout=30_000)
        expect(page.locator("#results .hit")).to_have_count(len(want))
        assert [page.locator("#results .hit .path").nth(i).get_attribute("title") for i in range(len(want))] == want
        assert f"label={word.replace(' ', '+')}" in page.url  # an address of its own
        page.locator("#label").fill("sailbot")
        page.locator("#label-form button").click()
        expect(page.locator("#status")).to_contain_text("did you mean 'sailboat'", timeout=30_000)
