"""Figures of data-contract Datasets (matplotlib; imports only xarray, numpy and matplotlib)."""

from .phase import collapse_phase_diagram as collapse_phase_diagram
from .style import new_figure as new_figure
from .style import save_figure as save_figure
from .trajectories import eigenvalue_trajectories as eigenvalue_trajectories
from .gsg import gsg_neg_dist_over_time as gsg_neg_dist_over_time
from .gsg import gsg_no_predictor as gsg_no_predictor
from .gsg import gsg_quality_vs_batch as gsg_quality_vs_batch
