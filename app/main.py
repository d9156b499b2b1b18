"""cacr_lab's live lab: start contrastive runs, watch them learn, compare them.

    make run                       # = streamlit run app/main.py, bound to 127.0.0.1

``app/.streamlit/config.toml`` sits next to this script, so Streamlit reads it (and binds to
127.0.0.1) whatever directory the page is started from.

The page never trains: from cacr_lab it imports only :mod:`cacr_lab.config` (the options and
their defaults), :mod:`cacr_lab.runs`, :mod:`cacr_lab.figures`, :mod:`cacr_lab.experiments` and
:mod:`cacr_lab.study_report` (the Study tab reads a study folder back),
never the training loop (tests/test_app.py checks the imports). Start launches
``python -m cacr_lab train ...`` as a process of its own that writes a run folder under the runs
root (``runs/`` in the current directory, or ``$CACR_LAB_RUNS``: ``cacr_lab.config.runs_root``);
the page only reads run folders, through :mod:`cacr_lab.runs`, and draws them with
:mod:`cacr_lab.figures`, the figures the notebooks show. So a run outlives a page reload, shows in
every browser tab, and runs started from the CLI or a notebook appear as well.

Refreshing: the run list is a fragment that polls the runs folder; the panels of the watched run
and the comparison are fragments that re-run every second only while a run they show is running.
When a run appears, starts or ends, the run list asks for one full rerun, which switches the
panels' refresh on or off. A running run's metrics are tailed (only new lines are parsed); a
figure is rebuilt only when its data changed, a UMAP once per snapshot.

This file is the page and its layout; its parts sit next to it (Streamlit puts the script's
folder on ``sys.path``, so they import as top-level modules, under ``streamlit run`` from any
directory and under ``AppTest``):

- ``state.py``: session-state defaults, the cached readers of run folders, the trainer processes;
- ``sidebar.py``: the new-run form and Start, the run list and Stop;
- ``panels.py``: the Live run and Compare runs tabs;
- ``study.py``: the Study tab (a ``cacr-lab study`` folder: its tables, intervals and verdicts).
"""

import streamlit as st

from cacr_lab import config

# isort: split
from panels import compare_view, watch_view
from sidebar import run_list, sidebar
from state import LIVE_EVERY, POLL_EVERY, init_state, overview, umap_warm_up
from study import study_view


def main() -> None:
    st.set_page_config(page_title="cacr_lab", layout="wide")
    init_state()
    root = config.runs_root()
    st.title("cacr_lab · live lab")
    st.caption(
        "Contrastive Attraction and Contrastive Repulsion (Zheng et al., TMLR 2023): start a run, "
        "watch the conditional weight pi_neg sharpen as classes form (pi_pos stays near uniform: "
        "the views of one image sit at nearly one distance), compare CACR with the baselines."
    )
    sidebar(root)
    found, _, states = overview(root)
    st.session_state.seen = states
    with st.expander("Runs", expanded=True):
        st.fragment(run_every=LIVE_EVERY if st.session_state.live else POLL_EVERY)(run_list)(root)
    live_tab, compare_tab, study_tab = st.tabs(["Live run", "Compare runs", "Study"])
    with live_tab:
        watch_view(root, found)
    with compare_tab:
        compare_view(root, found)
    with study_tab:
        study_view(root)
    umap_warm_up()  # after the first drawing: compiling must not delay the page


main()
