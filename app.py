"""The dashboard's entry point: ``streamlit run app.py``. The page list is ``dashboard.navigation.PAGES`` (Home
first), which keeps each page's file and URL (``pages/1_Schedules.py`` at ``/Schedules``, ...); each page file
also runs by itself (AppTest runs them directly)."""

import streamlit as st

from atp_viz.dashboard.navigation import HOME, PAGES

home = st.Page(HOME.path, title=HOME.title, default=True)
st.navigation([home, *(st.Page(p.path, title=p.title, url_path=p.url_path) for p in PAGES)]).run()
