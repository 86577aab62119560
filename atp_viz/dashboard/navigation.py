"""The dashboard's pages in navigation order: the one list that ``app.py`` (Streamlit's navigation) and
``home.py`` (its links) read. A page is one entry here and its file under ``pages/``."""

from __future__ import annotations

from typing import NamedTuple


class PageEntry(NamedTuple):
    path: str  # the page's file, relative to the app's folder
    title: str  # its name in the navigation
    url_path: str  # its URL: /<url_path>
    blurb: str  # what Home says it shows


HOME = PageEntry("home.py", "Home", "", "what the error explosion is and what ATP does")
PAGES = (
    PageEntry("pages/0_Lesson.py", "Lesson", "Lesson",
              "a guided walk through the error explosion and ATP (start here)"),
    PageEntry("pages/1_Schedules.py", "Schedules", "Schedules",
              "uniform, ATP, OWL, AlphaPruning, DLP, DSA, LSA and your own, with exports"),
    PageEntry("pages/2_Error_explosion.py", "Error explosion", "Error_explosion",
              "per-block reconstruction error of pruned models"),
    PageEntry("pages/3_Beta_tuning.py", "Beta tuning", "Beta_tuning", "the U-shaped beta sweep, point by point"),
    PageEntry("pages/4_Compare_strategies.py", "Compare strategies", "Compare_strategies",
              "methods x sparsities, with seeds"),
    PageEntry("pages/5_Theory_sandbox.py", "Theory sandbox", "Theory_sandbox",
              "a toy network showing Thm 3.2 and 3.5 instantly"),
    PageEntry("pages/6_ATP_vs_search.py", "ATP vs search", "ATP_vs_search",
              "the beta grid against Bayesian, evolutionary and DSA's graph search"),
    PageEntry("pages/7_Profile_shapes.py", "Profile shapes", "Profile_shapes",
              "attention vs MLP rates, curved profiles, 2-D sweeps"),
)  # fmt: skip
