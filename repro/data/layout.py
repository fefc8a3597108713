"""Coefficient layouts: each system's native vector vs the shared 6-coefficient mixed layout.

Mixed layout (docs/protocol.md §2.2) = [K11, K22, K12, v1, v2, omega] of the general operator
``-div(K grad u) + v.grad u - omega u = f``:

- poisson   native (kK11, kK22, kK12)              -> [kK11, kK22, kK12, 0, 0, 0]
- advdiff   native ((1-l)kK.., l v1, l v2)         -> [.., .., .., l v1, l v2, 0]
- helmholtz native (kappa, omega)                  -> [kappa, kappa, 0, 0, 0, omega]  (K = kappa I)
"""

from __future__ import annotations

from repro.config import COEFFICIENTS, LAYOUTS
from repro.pdes.xp import Array, namespace

#: Index of each native coefficient in the mixed layout (Helmholtz kappa fills K11 and K22).
_MIXED_COLUMNS: dict[str, tuple[tuple[int, ...], ...]] = {
    "poisson": ((0,), (1,), (2,)),
    "advdiff": ((0,), (1,), (2,), (3,), (4,)),
    "helmholtz": ((0, 1), (5,)),
}


def to_layout(pde: str, tensor: Array, layout: str) -> Array:
    """Convert native coefficients (N, T) of ``pde`` to ``layout``.

    Parameters
    ----------
    pde
        The system the coefficients belong to (``"mixed"``: already in the mixed layout).
    tensor
        Coefficients (N, T) in ``COEFFICIENTS[pde]`` order (numpy or torch).
    layout
        ``"native"`` (identity) or ``"mixed"`` -> (N, 6).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout = {layout!r} is invalid: allowed: {', '.join(LAYOUTS)}")
    if pde not in COEFFICIENTS:
        raise ValueError(f"pde = {pde!r} is invalid: allowed: {', '.join(COEFFICIENTS)}")
    if tensor.shape[-1] != len(COEFFICIENTS[pde]):
        raise ValueError(f"{pde} coefficients have {len(COEFFICIENTS[pde])} columns, got {tensor.shape[-1]}")
    if layout == "native" or pde == "mixed":
        return tensor
    xp = namespace(tensor)
    out = xp.zeros((tensor.shape[0], len(COEFFICIENTS["mixed"])), like=tensor)  # (N, 6)
    for j, targets in enumerate(_MIXED_COLUMNS[pde]):
        for col in targets:
            out[:, col] = tensor[:, j]
    return out
