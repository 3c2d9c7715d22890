"""Butcher tableaux of the adaptive methods, with scipy's coefficients (``RK45`` and ``DOP853``).

``dopri5``: Dormand-Prince 5(4), error order 4. ``dop853``: Hairer's 8(5,3), whose error estimate
combines a 5th- and a 3rd-order one. ``rk4`` is the classical fixed-step method (no tableau here:
the torch loop writes its four stages out).
"""

from __future__ import annotations

import numpy as np
import scipy.integrate
import torch

__all__ = ["METHODS", "Tableau", "tableau", "tableau_arrays"]

METHODS = ("dop853", "dopri5", "rk4")


class Tableau:
    """Coefficients of an embedded pair as float64 torch tensors (``.to`` moves them).

    A (s, s), B (s,), C (s,); E (s + 1,) for dopri5, or E5 and E3 (s + 1,) for dop853 (the last entry
    weighs the stage at the new point, FSAL). exponent = -1 / (error order + 1); order = the
    method's order.
    """

    def __init__(self, cls, error_order: int, dop853: bool):
        self.s = cls.n_stages
        self.A = torch.as_tensor(np.asarray(cls.A, dtype=float)[: self.s, : self.s])
        self.B = torch.as_tensor(np.asarray(cls.B, dtype=float))
        self.C = torch.as_tensor(np.asarray(cls.C, dtype=float)[: self.s])
        self.dop853 = dop853
        if dop853:
            self.E5 = torch.as_tensor(np.asarray(cls.E5, dtype=float))
            self.E3 = torch.as_tensor(np.asarray(cls.E3, dtype=float))
        else:
            self.E = torch.as_tensor(np.asarray(cls.E, dtype=float))
        self.exponent = -1.0 / (error_order + 1)
        self.order = cls.order

    def to(self, device, dtype):
        """Move the coefficient tensors to ``device`` and ``dtype`` (in place); returns self."""
        for name in ("A", "B", "C", "E5", "E3", "E"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).to(device, dtype))
        return self


def tableau(method: str) -> Tableau:
    """The tableau of an adaptive method (``dopri5`` or ``dop853``)."""
    if method == "dopri5":
        return Tableau(scipy.integrate.RK45, 4, dop853=False)
    return Tableau(scipy.integrate.DOP853, 7, dop853=True)


def tableau_arrays(method: str) -> dict:
    """The tableau of ``method`` as float64 numpy arrays (for the numba backends)."""
    tab = tableau(method)
    get = lambda name: tab.__dict__[name].numpy().copy() if name in tab.__dict__ else None  # noqa: E731
    return {"A": get("A"), "B": get("B"), "C": get("C"), "E": get("E"), "E3": get("E3"), "E5": get("E5"),
            "s": tab.s, "dop853": tab.dop853, "exponent": tab.exponent, "order": tab.order}
