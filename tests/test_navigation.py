"""One page list (``dashboard.navigation``) read by app.py's navigation and home.py's links."""

from __future__ import annotations

from pathlib import Path

from atp_viz.dashboard.navigation import HOME, PAGES

ROOT = Path(__file__).resolve().parents[1]


def test_every_page_file_is_listed_once_with_its_own_url() -> None:
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("*.py"))
    assert sorted(p.path for p in PAGES) == files
    assert (ROOT / HOME.path).exists()
    urls = [p.url_path for p in PAGES]
    assert len(set(urls)) == len(urls) and all(u and "/" not in u for u in urls)
    assert [p.path for p in PAGES] == sorted(p.path for p in PAGES)  # the files' numbers give the order


def test_app_and_home_read_the_list_instead_of_naming_pages() -> None:
    for name in ("app.py", "home.py"):
        text = (ROOT / name).read_text()
        assert "PAGES" in text and "pages/" not in text.replace("``pages/1_Schedules.py``", ""), name
