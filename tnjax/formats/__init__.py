"""Tensor formats as JAX pytrees, with reconstruction, random init and decompositions.

Classes: `CP`, `Tucker`, `TT`, `TTMatrix`, `TR` (factor layouts follow TensorLy).
Modules (nouns) hold the functions (verbs): ``from tnjax.formats import tt;
tt.to_dense(x)``, ``tt.from_dense(...)``, ``tt.round(...)``; `modes` factorises
dimensions into tensor modes.
"""

from tnjax.formats import cp, modes, tr, tt, ttm, tucker
from tnjax.formats.cp import CP
from tnjax.formats.tr import TR
from tnjax.formats.tt import TT
from tnjax.formats.ttm import TTMatrix
from tnjax.formats.tucker import Tucker

__all__ = ["CP", "Tucker", "TT", "TTMatrix", "TR", "cp", "tucker", "tt", "ttm", "tr", "modes"]
