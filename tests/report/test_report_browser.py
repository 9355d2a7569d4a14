"""The demo's report in a real browser: headless Chromium (selenium) over http on 127.0.0.1.

A small real demo run (every pillar, ``corpus_size=600``, one torch thread) is rendered once per module;
the page is served by :mod:`http.server` and opened in headless Chromium. Checked: no SEVERE console
entry, every image decoded, one figure per figure of ``report.json``, and every headline cell of the
overview equal to the number read from the results files *here* (with :func:`trustnlp.results.read_result`
and the test's own reading of each kind, not through the report's headline function). A screenshot of the
overview is kept in ``test-artifacts/report-overview.png`` (``TRUSTNLP_ARTIFACTS`` overrides the folder).

Without Chromium, chromedriver or selenium the test skips, unless ``REQUIRE_BROWSER=1`` (CI), where it fails.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from trustnlp.results import read_result

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[2]
NON_PRIVATE = "∞ (non-private)"
MISSING = "—"


def _browser_missing(reason: str) -> None:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser_tools() -> tuple[str, str]:
    """(chromium binary, chromedriver) or a skip (a failure with REQUIRE_BROWSER=1)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _browser_missing("selenium is not installed (pip install selenium)")
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver")
    if chromium is None:
        _browser_missing("Chromium not found (apt-get install chromium)")
    if driver is None:
        _browser_missing("chromedriver not found (apt-get install chromium-driver)")
    return chromium, driver  # type: ignore[return-value]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory, browser_tools: tuple[str, str]) -> Path:
    """A small real demo run (all stages) and its report; the folder holding report.html."""
    import torch

    from trustnlp.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        html = run_demo(out, seed=1, progress=False, corpus_size=600)
    finally:
        torch.set_num_threads(n)
    assert html == out / "report.html"
    return out


@pytest.fixture(scope="module")
def served(demo_report: Path) -> Iterator[str]:
    """The report folder served over http on 127.0.0.1 (a free port); yields the report's URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- the base class's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(demo_report)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/report.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def driver(browser_tools: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_tools
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000", "--hide-scrollbars",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        drv = webdriver.Chrome(service=Service(chromedriver), options=options)
    except Exception as e:  # noqa: BLE001 -- any start failure means no usable browser
        _browser_missing(f"headless Chromium did not start: {type(e).__name__}: {e}")
    try:
        drv.set_page_load_timeout(60)
        yield drv
    finally:
        drv.quit()


# -- the expected headline numbers, read here from the results files ---------------------------------
def _text(v: Any, *, epsilon_nonprivate: bool = False) -> str:
    if v is None:
        return NON_PRIVATE if epsilon_nonprivate else MISSING
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def expected_headlines(root: Path) -> dict[tuple[str, str], tuple[Any, str, str | None]]:
    """(result name, metric path) -> (value, displayed text, null reason) for every headline number of
    the demo under ``root``; the result name is its folder's name (unique in the demo)."""
    exp: dict[tuple[str, str], tuple[Any, str, str | None]] = {}

    def put(name: str, metric: str, value: Any, reasons: Mapping[str, str], *, nonprivate: bool = False) -> None:
        exp[(name, metric)] = (value, _text(value, epsilon_nonprivate=nonprivate),
                               reasons.get(metric) if value is None else None)

    for path in sorted(root.rglob("results.json")):
        res = read_result(path)
        name, m, why = path.parent.name, res.metrics, res.null_reasons
        if res.kind == "train":
            put(name, "metrics.test_accuracy", m["test_accuracy"], why)
            put(name, "metrics.epsilon", m["epsilon"], why, nonprivate=not m["private"])
            put(name, "metrics.delta", m["delta"], why)
            put(name, "metrics.privacy_unit", m["privacy_unit"], why)
        elif res.kind == "audit":
            for i, r in enumerate(res.rows):
                put(name, f"rows[{i}].epsilon", r["epsilon"], why, nonprivate=not r["private"])
                for key in ("mia_auc", "tpr_at_1e-3_fpr", "tpr_at_1e-2_fpr", "empirical_epsilon_lower"):
                    put(name, f"rows[{i}].{key}", r[key], why)
            put(name, "max(rows[].empirical_epsilon_lower)", max(r["empirical_epsilon_lower"] for r in res.rows), why)
            put(name, "metrics.claims_hold", m["claims_hold"], why)
        elif res.kind == "extract":
            for i, r in enumerate(res.rows):
                put(name, f"rows[{i}].epsilon", r["epsilon"], why, nonprivate=r["epsilon"] is None)
                for key in ("repetitions", "extraction_rate", "mean_exposure"):
                    put(name, f"rows[{i}].{key}", r[key], why)
        elif res.kind == "federate":
            selection = json.loads((path.parent / "selection.json").read_text(encoding="utf-8"))["selection"]
            put(name, "selection.json:selection", selection, why)
            put(name, "metrics.rounds", m["rounds"], why)
            put(name, "metrics.test_accuracy", m["test_accuracy"], why)
            put(name, "metrics.epsilon", m["epsilon"], why, nonprivate=not m["private"])
        elif res.kind == "fairness":
            ex = m["extrinsic"]
            for metric, gap in ex["group_metrics"]["difference"].items():
                put(name, f"metrics.extrinsic.group_metrics.difference.{metric}", gap, why)
            put(name, "metrics.extrinsic.counterfactual.flip_rate", ex["counterfactual"]["flip_rate"], why)
            for family in ("weat", "seat"):
                put(name, f"metrics.{family}_mean_abs_effect_size", m[f"{family}_mean_abs_effect_size"], why)
            for i, r in enumerate(res.rows):
                put(name, f"rows[{i}].effect_size", r["effect_size"], why)
                put(name, f"rows[{i}].p_value", r["p_value"], why)
            for i, r in enumerate(m["dp_disparate_impact"]):
                put(name, f"metrics.dp_disparate_impact[{i}].epsilon", r["epsilon"], why, nonprivate=not r["private"])
                for key in ("test_accuracy", "accuracy_gap"):
                    put(name, f"metrics.dp_disparate_impact[{i}].{key}", r[key], why)
        elif res.kind == "cda":
            for key in ("n_before", "n_after", "n_swapped_rows", "swap_accuracy"):
                put(name, f"metrics.{key}", m[key], why)
        else:
            raise AssertionError(f"the demo wrote an unexpected kind {res.kind!r} in {path}")
    return exp


def _artifacts_dir() -> Path:
    folder = Path(os.environ.get("TRUSTNLP_ARTIFACTS") or REPO_ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_demo_report_in_headless_chromium(demo_report: Path, served: str, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    index = json.loads((demo_report / "report.json").read_text(encoding="utf-8"))
    driver.get(served)
    assert driver.execute_script("return document.readyState") == "complete"
    assert driver.title == "trustnlp demo: assistant corpus"

    # the console: nothing severe (a missing resource, a script error, a blocked request)
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe

    # every image decoded; inline SVG (if any) drawn
    imgs = driver.find_elements(By.TAG_NAME, "img")
    assert imgs
    bad = driver.execute_script(
        "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0"
        " || i.naturalHeight === 0).map(i => i.alt)")
    assert bad == [], bad
    empty_svgs = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg')).filter(s => {const r = s.getBoundingClientRect();"
        " return r.width === 0 || r.height === 0;}).length")
    assert empty_svgs == 0
    figures = driver.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(figures) == len(imgs) == index["figure_count"]
    assert index["figure_count"] == (len(index["overview_figures"]) + sum(len(r["figures"]) for r in index["results"])) // 2
    assert not any(r["errors"] for r in index["results"])

    # the overview's headline numbers against the results files
    expected = expected_headlines(demo_report)
    assert {r["name"] for r in index["results"]} == {Path(r["path"]).parent.name for r in index["results"]}
    cells = driver.execute_script(
        "return Array.from(document.querySelectorAll('#overview table.headlines td[data-metric]')).map(td => ({"
        "result: td.dataset.result, metric: td.dataset.metric, value: td.dataset.value,"
        " text: td.innerText.trim(), title: td.getAttribute('title'), table: td.closest('table').id}))")
    shown: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        shown.setdefault((c["result"], c["metric"]), []).append(c)
    assert set(shown) == set(expected), (sorted(set(shown) - set(expected)), sorted(set(expected) - set(shown)))
    for key, (value, text, reason) in expected.items():
        for c in shown[key]:
            got = json.loads(c["value"])
            if isinstance(value, float):
                assert isinstance(got, float) and got == value, (key, got, value)  # JSON round-trips floats exactly
            else:
                assert got == value and type(got) is type(value), (key, got, value)
            assert c["text"] == text, (key, c["text"], text)
            if reason is not None:
                assert c["title"] == reason, (key, c["title"], reason)
    # the federated strategies, and the CDA row's retrained accuracy read from the train result inside cda/
    assert {json.loads(c["value"]) for c in cells if c["metric"] == "selection.json:selection"} == {"uniform", "activity:1"}
    cda_train = [c for c in cells if c["table"] == "headlines-mitigation" and c["result"] == "train"]
    assert len(cda_train) == 1 and cda_train[0]["metric"] == "metrics.test_accuracy"
    # report.json carries the same numbers as the page
    assert {(h["source"], h["metric"]) for h in index["headlines"]} == set(expected)
    for h in index["headlines"]:
        assert h["value"] == expected[(h["source"], h["metric"])][0]

    # provenance per section; data licences; no canary in the page
    for r in index["results"]:
        section = driver.find_element(By.CSS_SELECTOR, f"section#{_slug(driver, r['name'])}")
        text = section.get_attribute("textContent")
        res = read_result(r["path"])
        assert f"Seed: {res.seed}" in text and "Configuration" in text and res.versions["torch"] in text
    licences = driver.find_element(By.CSS_SELECTOR, "#overview table.licences").text
    assert "Apache-2.0" in licences  # the generated corpus
    # every licence the results files record is listed, and no other (the demo uses no SEAT file)
    recorded = set()
    for r in index["results"]:
        data = read_result(r["path"]).data
        for d in [data, *data.values()]:
            if isinstance(d, dict) and d.get("licence"):
                recorded.add(d["licence"])
    assert recorded and all(lic in licences for lic in recorded) and "CC-BY-NC-4.0" not in licences
    page = driver.page_source
    canaries = json.loads((demo_report / "extract" / "canaries_r10.json").read_text(encoding="utf-8"))["canaries"]
    assert canaries and not [c["text"] for c in canaries if c["text"] in page]

    # a screenshot of the overview, kept as a test artifact
    overview = driver.find_element(By.ID, "overview")
    height = driver.execute_script("return Math.ceil(arguments[0].getBoundingClientRect().bottom) + 40", overview)
    driver.set_window_size(1400, max(1000, min(int(height), 12000)))
    shot = _artifacts_dir() / "report-overview.png"
    assert overview.screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") > 0


def _slug(driver: Any, name: str) -> str:
    """The section id the overview links ``name`` to."""
    from selenium.webdriver.common.by import By

    links = [a for a in driver.find_elements(By.CSS_SELECTOR, "#overview table.headline a") if a.text == name]
    assert len(links) == 1, name
    return links[0].get_attribute("href").rsplit("#", 1)[1]
