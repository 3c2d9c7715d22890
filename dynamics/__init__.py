"""Gradient-flow dynamics of linear BYOL/SimSiam (Tian, Chen & Ganguli 2021) and their checks.

Entry points: :func:`simulate` / :func:`sweep` on a :class:`Simulation`. The theory tools are the
modules :mod:`closed_forms`, :mod:`symbolic` and :mod:`theorems` (``from stopgrad.dynamics import
closed_forms``), living in the ``theory`` subpackage; the solvers in ``solvers``.
"""

from ._checks import ConfigError as ConfigError
from ._checks import check as check
from ._checks import check_choice as check_choice
from ._checks import check_finite as check_finite
from ._checks import check_psd as check_psd
from ._checks import check_range as check_range
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
from .theory import closed_forms as closed_forms
from .theory import symbolic as symbolic
from .theory import theorems as theorems
