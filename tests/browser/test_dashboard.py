"""The dashboard in a real headless browser (Debian's Chromium driven by Playwright): an official
signs in through the hub's OAuth server (authorization code + PKCE), picks a condition and a
period, sees the epidemic curve, the district table and the age–sex pyramid with suppressed cells
marked, and downloads a view as CSV. A screenshot is kept in ``test-artifacts/`` (or
``$HEALTHHUB_TEST_ARTIFACTS``).

Expected counts come from the case-report rows sent (plain Python over the generated rows).
``.ci/run`` installs Chromium; without it (or without Playwright) the test is skipped, saying so.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from healthhub import demo, demo_cases
from healthhub.auth.registry import create_user
from healthhub.clock import utcnow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
ARTIFACTS = Path(os.environ.get("HEALTHHUB_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
ROWS = 600  # the first rows of the demo case reports: dengue (A90) across 2026
PASSWORD = "officer-password-1"


@pytest.fixture
def served(make_app: Any) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """The hub on a real port (its base URL is that address), with an official and case reports."""
    from werkzeug.serving import make_server

    from healthhub import ingest_pipeline
    from healthhub.ingest.csv_profile import load_profile
    from healthhub.ingest.pipeline import Caller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    app = make_app(base_url=base)
    db = app.extensions["healthhub.db"]
    with db.transaction() as session:
        create_user(session, username="officer", password=PASSWORD, role="public-health", now=utcnow())
    demo.seed_senders(db)
    rows = demo_cases.rows()[:ROWS]
    out = io.StringIO()
    writer = csv.DictWriter(out, demo_cases.HEADER)
    writer.writeheader()
    writer.writerows(rows)
    report = ingest_pipeline(db, app.config["HEALTHHUB"]).receive_csv(
        io.BytesIO(out.getvalue().encode()), load_profile("case-report"), Caller("cli"))
    assert report.accepted == ROWS
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, rows
    finally:
        server.shutdown()
        thread.join(5)


def iso_week(day: str) -> str:
    year, week, _ = date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


def test_official_signs_in_and_sees_the_curve_and_downloads_csv(served: tuple[str, list[dict[str, str]]],
                                                              tmp_path: Path) -> None:
    base, rows = served
    weekly = Counter(iso_week(r["onset_date"]) for r in rows if r["condition_code"] == "A90")
    districts = Counter((r["province"], r["district"]) for r in rows if r["condition_code"] == "A90")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 2400})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # Failed requests by URL (the sign-in pages have no icon: the browser's /favicon.ico is a 404).
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
        page.on("console", lambda msg: errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
        page.goto(f"{base}/dashboard")
        page.click("#signin-button")
        page.fill("#username", "officer")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.click("button[value=allow]")
        page.wait_for_selector("#filters:not([hidden])")
        page.select_option("#condition", "A90")
        page.fill("#from", "2026-01-01")
        page.fill("#to", "2026-12-31")
        page.click("#filters button[type=submit]")  # the status says "Loading…" until all three views are drawn
        playwright_api.expect(page.locator("#status")).to_contain_text("case reports of A90", timeout=20000)
        assert not errors, errors

        # The curve's table: every week with a count of at least 11 shows it; smaller ones are marked.
        cells = page.eval_on_selector_all("#curve-table tbody tr", "rows => rows.map(r => [r.cells[0].textContent, "
                                          "r.cells[1].textContent, r.cells[1].classList.contains('suppressed')])")
        shown = {week: (text, marked) for week, text, marked in cells}
        assert set(weekly) <= set(shown)
        for week, n in weekly.items():
            text, marked = shown[week]
            if n < 11:
                assert marked and text == "<11", (week, n, text)
            elif not marked:
                assert text == str(n), (week, n, text)
        assert any(marked for _, marked in shown.values()) and any(not m for _, m in shown.values())
        # The chart draws the same published counts.
        drawn = page.evaluate("Chart.getChart(document.getElementById('curve-chart')).data.datasets[0].data")
        assert [d for d in drawn if d] == [int(t) for t, m in shown.values() if not m and t != "0"]
        # The district table and the pyramid are there, with their suppressed cells marked.
        places = page.eval_on_selector_all("#places-table tbody tr", "rows => rows.map(r => [r.cells[0].textContent, "
                                           "r.cells[1].textContent, r.cells[2].textContent])")
        for province, district, text in places:
            if text != "<11":
                assert int(text) == districts[(province, district)]
        assert page.eval_on_selector_all("#pyramid-table tbody tr", "rows => rows.length") == 6

        with page.expect_download() as info:
            page.click("button.csv[data-view=curve]")
        download = info.value
        path = tmp_path / "curve.csv"
        download.save_as(path)
        lines = list(csv.reader(path.read_text().splitlines()))
        assert lines[0] == ["period:week", "count"]
        from_csv = {w: c for w, c in lines[1:]}
        for week, (text, marked) in shown.items():
            if week in from_csv:
                assert from_csv[week] == ("" if marked else text)

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()


def test_the_page_is_locked_down(served: tuple[str, list[dict[str, str]]]) -> None:
    import requests

    base, _ = served
    resp = requests.get(f"{base}/dashboard", timeout=10)
    assert resp.status_code == 200 and "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "<script>" not in resp.text  # no inline script: the CSP would block it
    assert requests.get(f"{base}/stats/Condition?_group-by=gender", timeout=10).status_code == 401
