"""When a unit's training forward runs through ``torch.compile`` (inductor): the rule, torch-free.

The engine (:mod:`repro.train.engine`) and the cost model (:mod:`repro.grid.estimate`) both ask
:func:`compiles`, so ``--dry-run`` predicts the path the workers take.  Compilation is an execution
detail like the spectral path: recorded as the metric ``compiled``, never part of a run_key.

Why a rule and not always: on a CPU the compiled fused step is faster than the eager one, but
the first step of every unit pays the compilation.  Measured on the 2-core machine, one thread,
16², batch 32: training steps 1.18-1.28x the eager fused path and 1.8-2.0x the plain fast path
(``benchmarks/bench_train.py --sections ladder``); inside the training loop, evaluations and the
optimiser still eager, 1.2-1.4x at steady state (xs and xs-m8, 1-4 members).  A whole cpu-study
unit (xs-m8, N = 256, 4 members, 2,000 steps, ``repro.train.engine.execute``): 170 s eager, 132 s
compiled with a warm inductor cache (1.29x), 165 s with a cold one (the compilation took ~35 s).
The cache lives under ``$TORCHINDUCTOR_CACHE_DIR`` (default ``/tmp/torchinductor_$USER``) and
serves every later unit of the same shapes, in any process.  Short units, most of a grid's
small-N runs, would only get slower, so ``auto`` compiles a unit when its training work pays for
a compilation.  On CUDA nothing here has been measured yet, so ``auto`` keeps CUDA eager; ``on``
compiles on every device.  The test errors of the compiled unit above equal the eager ones to 5
digits (floating-point reassociation only).
"""

from __future__ import annotations

__all__ = ["COMPILED_STEP_FACTOR", "COMPILE_MODES", "COMPILE_SECONDS", "MIN_COMPILED_TRAIN_FLOPS",
           "check_compile_mode", "compiles"]

#: ``auto``: compile long CPU units (:data:`MIN_COMPILED_TRAIN_FLOPS`); ``on``: every trained unit,
#: every device; ``off``: never (the eager path every earlier run used).
COMPILE_MODES: tuple[str, ...] = ("auto", "on", "off")

#: A unit compiles under ``auto`` from this much training work (3 forward passes per sample over
#: all members and epochs, :func:`repro.flops.training_flops`'s convention).  The unit above is
#: 3.9e12 FLOPs (170 s eager); 2.5e12 is about 110 s eager, of which compiled saves ~28 s: more
#: than a warm compilation costs (2-5 s) and about what a cold one does.  In cpu-study-v2 that is
#: 33 of its 158 units: every xs-m8 unit at N = 512 and 1,024, those at N = 256 with 4 members (or
#: 2 members at 500 epochs), and the xs-m8 pre-training; 1- and 2-member units at N = 256
#: (1.9e12) and the smaller rungs stay eager.  Every unit of the quick grid is below it (its
#: largest, the pre-training, is 1.98e12), so the quick grid trains eagerly.
MIN_COMPILED_TRAIN_FLOPS = 2.5e12

#: For the cost model: a compiled CPU training step costs this fraction of the timed eager one
#: (the unit above: 132 / 170 s whole, evaluations included), and a unit's first step adds
#: :data:`COMPILE_SECONDS`, between a warm cache's 2-5 s and a cold one's ~35 s.
COMPILED_STEP_FACTOR = 0.75
COMPILE_SECONDS = 20.0


def check_compile_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`COMPILE_MODES`; otherwise a ValueError that lists them."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile = {mode!r} is invalid: allowed: {', '.join(COMPILE_MODES)}")
    return mode


def compiles(mode: str, device: str, train_flops: float, *, spectral: str) -> bool:
    """Whether a unit with ``train_flops`` of training work on ``device`` and the ``spectral`` path
    trains compiled.  ``auto`` leaves the rfft2 reference eager: it is the plain path kept for
    comparison, and compiling it was never measured."""
    check_compile_mode(mode)
    if mode != "auto":
        return mode == "on"
    return (str(device).split(":", 1)[0] == "cpu" and spectral != "reference"
            and train_flops >= MIN_COMPILED_TRAIN_FLOPS)
