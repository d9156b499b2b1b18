"""Every plotly figure of the lab, shared by the Streamlit app and the notebooks.

Each builder takes plain data -- :class:`~cacr_lab.runs.Run` and
:class:`~cacr_lab.runs.Snapshot` objects, numpy arrays, lists -- and returns a
``plotly.graph_objects.Figure``. Nothing here imports Streamlit or touches a notebook, so the app
and the notebooks show the same picture. Nor does anything here import torch: the package reads
runs through :mod:`cacr_lab.runs` and draws with numpy and plotly only.

Conventions:

- A run's legend name is ``"{method} · {run name}"`` with the method as in its config
  (``cacr``, ``infonce``, ...). Each method keeps one colour everywhere (:func:`method_color`);
  several runs of one method get lighter/darker shades of it.
- A class keeps one colour everywhere (:func:`class_color`).
- Conditional weights are shown as *weight × set size* (pi_pos × K, pi_neg × N), so 1 means
  uniform whatever the set size; > 1 means the point gets more than its uniform share.
- Loss parts keep one line style, marker and shade each: loss solid, attraction dashed,
  repulsion dotted, ... Each method's loss has its own panel and y-axis (the units differ), and
  InfoNCE's parts are named by their terms (-s+/T, log-sum-exp: their signs are the opposite of
  CACR's attraction and repulsion).
- A panel with nothing to show says so inside it; legends sit under the plot.
- Every figure renders offline: :func:`write_html` writes plotly.js beside the HTML pages, and
  :func:`setup_notebook` makes notebook outputs carry it (for an HTML export).

Map (import everything from ``cacr_lab.figures``; the modules are where it lives):

- :mod:`~cacr_lab.figures.style`: the shared look -- :data:`METHOD_COLORS`, :func:`method_color`,
  :func:`class_color`, :func:`run_label`, :func:`part_name`, line styles, axis titles, the
  template, the layout widths and :func:`wrap` for titles.
- :mod:`~cacr_lab.figures.training`: a run's records over training and runs side by side --
  :func:`loss_curves`, :func:`eval_curves`, :func:`weight_stats_over_time`,
  :func:`per_class_bars`, :func:`compare_rows` (a plain table widget), :func:`compare_table`,
  :func:`metric_bars`.
- :mod:`~cacr_lab.figures.weights`: the conditional weights -- :func:`weight_histograms`,
  :func:`weight_vs_distance` (a snapshot) and :func:`weights_vs_distance_curves` (theory).
- :mod:`~cacr_lab.figures.embedding`: :func:`compute_umap` (with its numba disk cache,
  :func:`enable_umap_disk_cache`, :func:`warm_up_umap`), :func:`embedding_scatter` and
  :func:`embedding_panels` (maps side by side, one figure).
- :mod:`~cacr_lab.figures.lens`: what the weights look at -- :func:`query_lens` (one query's
  positives and heaviest / lightest negatives as images, a version 2 snapshot), :func:`lens_queries`
  and :func:`false_negative_curves` (the weight on the query's own class over training).
- :mod:`~cacr_lab.figures.theory`: figures of :mod:`cacr_lab.theory`'s data --
  :func:`force_field`, :func:`query_force_figure`, :func:`theory_curves`.
- :mod:`~cacr_lab.figures.study`: a study's numbers (``cacr-lab study``) --
  :func:`interval_plot` (paired differences with interval bars), :func:`rare_frequent_bars`,
  :func:`study_accuracy_bars`.
- :mod:`~cacr_lab.figures.output`: :func:`write_html`, :func:`setup_notebook` and
  :func:`mathjax_url` (offline HTML pages and notebook exports).

>>> import numpy as np
>>> fig = weights_vs_distance_curves(np.linspace(0, 4, 9), [0.0, 1.0], kind="neg")
>>> [t.name for t in fig.data]
['cacr tau_neg=0', 'cacr tau_neg=1']
"""

from cacr_lab.figures.embedding import (
    compute_umap,
    embedding_panels,
    embedding_scatter,
    enable_umap_disk_cache,
    warm_up_umap,
)
from cacr_lab.figures.lens import FN_KEYS, false_negative_curves, lens_queries, query_lens
from cacr_lab.figures.output import mathjax_url, setup_notebook, write_html
from cacr_lab.figures.study import interval_plot, rare_frequent_bars, study_accuracy_bars
from cacr_lab.figures.style import (
    DESIGN_WIDTHS,
    METHOD_COLORS,
    class_color,
    method_color,
    part_name,
    run_label,
    wrap,
)
from cacr_lab.figures.theory import FORCE_COLORS, force_field, query_force_figure, theory_curves
from cacr_lab.figures.training import (
    LOSS_PARTS,
    WEIGHT_STATS,
    compare_rows,
    compare_table,
    eval_curves,
    loss_curves,
    metric_bars,
    per_class_bars,
    weight_stats_over_time,
)
from cacr_lab.figures.weights import (
    weight_histograms,
    weight_vs_distance,
    weights_vs_distance_curves,
)

__all__ = [
    "DESIGN_WIDTHS",
    "FN_KEYS",
    "FORCE_COLORS",
    "LOSS_PARTS",
    "METHOD_COLORS",
    "WEIGHT_STATS",
    "class_color",
    "compare_rows",
    "compare_table",
    "compute_umap",
    "embedding_panels",
    "embedding_scatter",
    "enable_umap_disk_cache",
    "eval_curves",
    "false_negative_curves",
    "force_field",
    "interval_plot",
    "lens_queries",
    "loss_curves",
    "method_color",
    "metric_bars",
    "part_name",
    "per_class_bars",
    "query_force_figure",
    "query_lens",
    "rare_frequent_bars",
    "run_label",
    "mathjax_url",
    "setup_notebook",
    "study_accuracy_bars",
    "theory_curves",
    "warm_up_umap",
    "weight_histograms",
    "weight_stats_over_time",
    "weight_vs_distance",
    "weights_vs_distance_curves",
    "wrap",
    "write_html",
]
