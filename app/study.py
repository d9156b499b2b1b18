"""The Study tab: a study folder (``cacr-lab study --out DIR``) read back and shown.

The page computes nothing: :func:`cacr_lab.study_report.load_study` reads the folder's
``results.csv`` and ``references.csv`` into the report's tables (mean ± std, the paired
differences with their 95 % t-intervals and verdicts), and :mod:`cacr_lab.figures` draws them,
the figures ``report.md``'s folder holds as HTML and notebook 03 shows.
"""

from pathlib import Path

import streamlit as st
from state import PLOT

from cacr_lab import figures
from cacr_lab.study_report import NotAStudyError, find_studies, load_study

RESULTS_DIR = Path("results")  # where the README's `cacr-lab study ... --out results/NAME` go
DIFFERENCES = (
    (
        "paired",
        "Does CACR's accuracy differ from each baseline's? CACR − baseline, paired by seed",
        "CACR − baseline, paired by seed (95 % t-interval)",
    ),
    (
        "drop_differences",
        "Does CACR drop less under imbalance? CACR's drop − the baseline's (lower: more robust)",
        "CACR's drop − baseline's drop, balanced − imbalanced (95 % t-interval)",
    ),
    (
        "rare_paired",
        "The rarer half of the classes: CACR − baseline, paired by seed",
        "Rare half: CACR − baseline, paired by seed (95 % t-interval)",
    ),
)


def table(rows: list[dict], key: str) -> None:
    """Every row shown (Streamlit's default height stops at 10 and scrolls)."""
    st.dataframe(rows, hide_index=True, key=key, height=38 + 35 * len(rows))


def default_folder(root: Path) -> str:
    """The newest study folder under the runs root or ``results/``; "" if there is none."""
    found = find_studies(root, RESULTS_DIR)
    return str(found[0]) if found else ""


def study_view(root: Path) -> None:
    if "study_folder" not in st.session_state:
        st.session_state.study_folder = default_folder(root)
    folder = st.text_input(
        "Study folder",
        key="study_folder",
        help="the --out folder of `cacr-lab study` (results.csv, references.csv, report.md)",
    ).strip()
    if not folder:
        st.info(
            f"No study folder found under {root} or {RESULTS_DIR}/: make one with "
            "`cacr-lab study --preset cpu-digits --out results/cpu-digits` and type its path."
        )
        return
    try:
        view = load_study(folder)
    except NotAStudyError as e:
        st.warning(str(e))
        return
    st.subheader(view.title)
    st.caption(
        "Mean ± std over seeds, in %. The reference rows are the encoder at each seed's initial "
        "weights and the raw pixels, evaluated the same way: what pre-training added is the gap "
        "to them. Full text: report.md in the folder."
    )
    table(view.accuracy_table(), "study_accuracy")
    for key, heading, title in DIFFERENCES:
        rows = view.difference_table(key)
        if not rows:
            continue
        st.markdown(f"**{heading}**")
        st.caption(
            "95 % Student t-interval over the seeds of the paired difference, in points; "
            "'inconclusive at this budget' where the interval contains 0."
        )
        table(rows, f"study_{key}")
        fig = figures.interval_plot(view.interval_rows(key), title=title)
        st.plotly_chart(fig, key=f"study_{key}_plot", **PLOT)
    halves = view.halves_rows()
    if halves:
        fig = figures.rare_frequent_bars(halves)
        st.plotly_chart(fig, key="study_halves", **PLOT)
