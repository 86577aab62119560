"""The dashboard's entry point: ``streamlit run app.py``. Names every page (the first one "Home") and
keeps each page's file and URL (``pages/1_Schedules.py`` at ``/Schedules``, ...); each page file also
runs by itself (AppTest runs them directly)."""

import streamlit as st

PAGES = [
    st.Page("home.py", title="Home", default=True),
    st.Page("pages/0_Lesson.py", title="Lesson", url_path="Lesson"),
    st.Page("pages/1_Schedules.py", title="Schedules", url_path="Schedules"),
    st.Page("pages/2_Error_explosion.py", title="Error explosion", url_path="Error_explosion"),
    st.Page("pages/3_Beta_tuning.py", title="Beta tuning", url_path="Beta_tuning"),
    st.Page("pages/4_Compare_strategies.py", title="Compare strategies", url_path="Compare_strategies"),
    st.Page("pages/5_Theory_sandbox.py", title="Theory sandbox", url_path="Theory_sandbox"),
    st.Page("pages/6_ATP_vs_search.py", title="ATP vs search", url_path="ATP_vs_search"),
    st.Page("pages/7_Profile_shapes.py", title="Profile shapes", url_path="Profile_shapes"),
]
st.navigation(PAGES).run()
