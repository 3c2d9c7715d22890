"""Instruments: collapse metrics, spectra, kNN, unit mapping, theory-vs-measured comparison and the
xarray data contract.

Everything here takes arrays, tensors or Datasets and imports nothing else of stopgrad.
"""

from .comparison import HYPERPARAMETERS as HYPERPARAMETERS
from .comparison import compare as compare
from .comparison import comparison_scores as comparison_scores
from .comparison import flow_hyperparameters as flow_hyperparameters
from .comparison import flow_time as flow_time
from .comparison import format_comparison as format_comparison
from .knn import knn_accuracy as knn_accuracy
from .knn import knn_predict as knn_predict
from .metrics import align_loss as align_loss
from .metrics import alpha_req as alpha_req
from .metrics import effective_rank as effective_rank
from .metrics import embedding_spectrum as embedding_spectrum
from .metrics import entropy_rank as entropy_rank
from .metrics import rankme as rankme
from .metrics import std_of_l2_normalized as std_of_l2_normalized
from .metrics import uniformity as uniformity
from .moments import augmentation_moments as augmentation_moments
from .moments import moments_standard_error as moments_standard_error
from .moments import psd_part as psd_part
from .schema import MODE_VARIABLES as MODE_VARIABLES
from .schema import SCALAR_VARIABLES as SCALAR_VARIABLES
from .schema import DatasetError as DatasetError
from .schema import atomic_path as atomic_path
from .schema import build_dataset as build_dataset
from .schema import open_dataset as open_dataset
from .schema import validate_dataset as validate_dataset
from .schema import write_netcdf as write_netcdf
from .spectral import eigh_descending as eigh_descending
from .spectral import spectral_quantities as spectral_quantities
from .spectral import symmetric_part_norms as symmetric_part_norms
from .units import FlowUnits as FlowUnits
from .units import OptimizerUnits as OptimizerUnits
from .units import steps_to_flow_time as steps_to_flow_time
from .units import to_flow as to_flow
from .units import to_optimizer as to_optimizer
