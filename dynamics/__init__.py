"""Gradient-flow dynamics of linear BYOL/SimSiam (Tian, Chen & Ganguli 2021) and their checks.

Entry points: :func:`simulate` / :func:`sweep` on a :class:`Simulation`; :func:`sweep_distributed`
runs a sweep in chunks on a dask.distributed cluster (the optional extra ``stopgrad[distributed]``). The theory tools are the
modules :mod:`closed_forms`, :mod:`symbolic` and :mod:`theorems` (``from stopgrad.dynamics import
closed_forms``), living in the ``theory`` subpackage; the solvers in ``solvers``.
"""

from ._checks import ConfigError as ConfigError
from ._checks import check as check
from ._checks import check_choice as check_choice
from ._checks import check_finite as check_finite
from ._checks import SEED_MAX as SEED_MAX
from ._checks import check_psd as check_psd
from ._checks import check_range as check_range
from ._checks import check_seed as check_seed
from .initial import FrozenArray as FrozenArray
from .initial import InitialState as InitialState
from .matrix_flow import MatrixFlow as MatrixFlow
from .matrix_flow import SymmetrizedFlow as SymmetrizedFlow
from .matrix_flow import draw_initial_matrices as draw_initial_matrices
from .mode_flow import ModeFlow as ModeFlow
from .model import DataSpec as DataSpec
from .model import InitSpec as InitSpec
from .model import LinearModel as LinearModel
from .model import RuleSpec as RuleSpec
from .predictor_rules import CorrelationEMA as CorrelationEMA
from .predictor_rules import PredictorRule as PredictorRule
from .predictor_rules import directcopy as directcopy
from .predictor_rules import directpred as directpred
from .predictor_rules import directset as directset
from .predictor_rules import make_rule as make_rule
from .predictor_rules import matrix_rule as matrix_rule
from .predictor_rules import spectral_rule as spectral_rule
from .results import collapse_verdicts as collapse_verdicts
from .results import saved_bytes_per_run as saved_bytes_per_run
from .runs import RunTable as RunTable
from .sampled import autograd_gradients as autograd_gradients
from .sampled import moment_gradients as moment_gradients
from .sampled import wishart_moments as wishart_moments
from .simulate import simulate as simulate
from .simulate import sweep as sweep
from .solvers import STATUS as STATUS
from .solvers import IntegrationResult as IntegrationResult
from .solvers import Solver as Solver
from .solvers import integrate as integrate
from .solvers import integrate_scipy as integrate_scipy
from .specs import ModeInit as ModeInit
from .specs import SampledSpec as SampledSpec
from .specs import Simulation as Simulation
from .siamese import SIAMESE_METHODS as SIAMESE_METHODS
from .siamese import EvalSet as EvalSet
from .siamese import SiameseData as SiameseData
from .siamese import SiameseSimulation as SiameseSimulation
from .siamese import SiameseSpec as SiameseSpec
from .siamese import batched_metrics as batched_metrics
from .siamese import candidate_losses as candidate_losses
from .siamese import gsg_choice as gsg_choice
from .siamese import make_dataset as make_dataset
from .siamese import siamese_verdicts as siamese_verdicts
from .siamese import simulate_siamese as simulate_siamese
from .siamese import four_view_loss as four_view_loss
from .siamese import init_params as init_params
from .siamese import negative_distances as negative_distances
from .distributed import ChunkPlan as ChunkPlan
from .distributed import SweepReport as SweepReport
from .distributed import chunk_folder as chunk_folder
from .distributed import plan_chunks as plan_chunks
from .distributed import require_distributed as require_distributed
from .distributed import sweep_distributed as sweep_distributed
from .gsg_flow import SELECTION_SIGN as SELECTION_SIGN
from .gsg_flow import GSGFlow as GSGFlow
from .gsg_flow import expected_gradients as expected_gradients
from .gsg_flow import integrate_gsg_flow as integrate_gsg_flow
from .gsg_flow import pair_differences as pair_differences
from .gsg_flow import repulsion_matrix as repulsion_matrix
from .theory import closed_forms as closed_forms
from .theory import symbolic as symbolic
from .theory import theorems as theorems
