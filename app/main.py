"""cacr_lab's live dashboard (placeholder until the dashboard issue lands)."""

import streamlit as st

import cacr_lab

st.set_page_config(page_title="cacr_lab", layout="wide")
st.title("cacr_lab — Contrastive Attraction and Contrastive Repulsion")
st.info(
    f"cacr_lab {cacr_lab.__version__}: the live dashboard is not built yet. "
    "The loss family is ready: `from cacr_lab import cacr_loss`."
)
