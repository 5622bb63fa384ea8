"""kvsim's Streamlit what-if dashboard: ``kvsim dashboard`` or ``streamlit run app/main.py``.

The entry script only sets the page up and hands over to :func:`st.navigation`; each page
is its own script under ``app/pages/`` (see :mod:`app.navigation` for which are listed).
"""

from __future__ import annotations

import streamlit as st

from app.navigation import APP_DIR, available_pages

st.set_page_config(page_title="kvsim dashboard", page_icon=":material/memory:", layout="wide")

pages = [
    st.Page(
        APP_DIR / spec.script,
        title=spec.title,
        icon=spec.icon,
        url_path=spec.url_path,
        default=index == 0,
    )
    for index, spec in enumerate(available_pages())
]
st.navigation(pages).run()
