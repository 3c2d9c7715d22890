"""The theory tools: closed forms of the paper, their sympy re-derivation, and numerical checks of every theorem.

* :mod:`.closed_forms` fixed points, critical weight decay, basin edges, local rates (numpy)
* :mod:`.symbolic`     sympy re-derivation of the closed forms from the ODEs
* :mod:`.theorems`     numerical checks of each theorem through the public entry point (``stopgrad check``)
* :mod:`.gsg_checks`   the same for GSG's statements (docs/gsg_theory.md), registered into theorems.CHECKS
* :mod:`.check_result` one row of the check table, shared by both
"""

from . import closed_forms as closed_forms
from . import symbolic as symbolic
from . import theorems as theorems
