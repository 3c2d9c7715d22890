"""Figures of data-contract Datasets (matplotlib; imports only xarray, numpy and matplotlib).

One function per kind of figure, each taking contract Datasets and returning a matplotlib Figure, and
:func:`render_gallery`, which draws every figure its inputs allow (PNG and PDF).
"""

from .compared import trajectories_compared as trajectories_compared
from .diagnostics import alignment_and_commutator as alignment_and_commutator
from .diagnostics import collapse_metrics as collapse_metrics
from .diagnostics import feature_dim as feature_dim
from .diagnostics import predictor_rules as predictor_rules
from .diagnostics import predictor_symmetry as predictor_symmetry
from .gallery import GalleryItem as GalleryItem
from .gallery import gallery_plan as gallery_plan
from .gallery import is_comparison as is_comparison
from .gallery import is_phase_diagram as is_phase_diagram
from .gallery import render_gallery as render_gallery
from .phase import collapse_phase_diagram as collapse_phase_diagram
from .phase import phase_diagram_measured as phase_diagram_measured
from .portrait import phase_line as phase_line
from .portrait import phase_portrait as phase_portrait
from .style import PALETTE as PALETTE
from .style import new_figure as new_figure
from .style import save_figure as save_figure
from .style import time_label as time_label
from .trajectories import eigenvalue_trajectories as eigenvalue_trajectories
from .gsg import gsg_neg_dist_over_time as gsg_neg_dist_over_time
from .gsg import gsg_no_predictor as gsg_no_predictor
from .gsg import gsg_quality_vs_batch as gsg_quality_vs_batch
