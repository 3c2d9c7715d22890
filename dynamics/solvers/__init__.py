"""The solver wing: tableaux, the one step controller, the torch RK loop and the numba backends.

* :mod:`.tableaux`       Butcher tableaux (dopri5, dop853) as torch and numpy arrays
* :mod:`.control`        the adaptive step controller and Hairer's starting step, named constants
* :mod:`.torch_rk`       the batched torch loop: ``integrate``, ``Solver``, ``IntegrationResult``
* :mod:`.numba_rhs`      the built-in flows' right-hand sides for the numba backends
* :mod:`.numba_runs`     numba backend: one run at a time per share (any built-in flow; also rk4)
* :mod:`.numba_lanes`    numba backend: SIMD lanes for many per-mode systems
* :mod:`.numba_one_mode` numba backend: one mode per run, Dormand-Prince 5(4) (phase diagrams)
* :mod:`.scheduling`     shares of a batch handed to threads dynamically (a busy core costs its share)
* :mod:`.driver`         backend choice; flow + RunTable in, IntegrationResult out
"""

from .driver import integrate_flow as integrate_flow
from .driver import solve_batch as solve_batch
from .tableaux import METHODS as METHODS
from .tableaux import tableau_arrays as tableau_arrays
from .torch_rk import STATUS as STATUS
from .torch_rk import STATUS_NAMES as STATUS_NAMES
from .torch_rk import IntegrationResult as IntegrationResult
from .torch_rk import Solver as Solver
from .torch_rk import integrate as integrate
from .torch_rk import integrate_scipy as integrate_scipy
