"""``stalerl.diagnostics``: the seed papers' analyses of runs (grad norms, entropy vs |r-1|,
accepted log rho(tau), KS test, reject share, acceptance/M̂2 correlation).

A re-export of :mod:`stalerl.evaluation.diagnostics`; see there for the documentation.
"""

from stalerl.evaluation.diagnostics import *  # noqa: F401,F403
from stalerl.evaluation.diagnostics import __all__  # noqa: F401
