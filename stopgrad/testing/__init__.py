"""Testing tools for users of stopgrad: hypothesis strategies for property-based tests.

The way ``xarray.testing.strategies`` serves xarray users, :mod:`stopgrad.testing.strategies` serves
anyone who writes a loss, a predictor rule or a config and wants to test it against the invariants the
built-in ones satisfy (see the README section "Test your own loss" and ``tests/properties``)::

    from hypothesis import given
    from stopgrad.testing import strategies as sgst

    @given(sgst.embedding_pairs())
    def test_my_loss_is_bounded(pair):
        z1, z2 = pair
        ...

Hypothesis is needed by this module only: install it with ``pip install 'stopgrad[testing]'``.
"""

from . import strategies as strategies
from .toml import to_toml as to_toml
