"""The roles of runs and of result rows, and the reference method, named in one place.

A result row's ``role`` says how the module it scores relates to the model it was evaluated on:

- :data:`BASE`: fitted on this model (the source) and evaluated on it;
- :data:`NEW`: fitted on the source and evaluated unchanged on this model (a target: the :data:`IDENTITY` mapper);
- :data:`MAPPED`: fitted on the source and carried to this model, a target, by a mapper other than identity (its
  row names the mapper): never read as New, so no aggregate mixes a mapped entry with unmapped ones;
- :data:`ORACLE`: fitted on this model, a target, and evaluated there: the ceiling of the recovery ratio.

A planned run (:class:`upgradebench.plan.RunPlan`) has role :data:`BASE` (fitted on its source, evaluated on the
source and each target) or :data:`ORACLE`. Every run also writes the rows of :data:`ZERO_SHOT` beside its
own, the zero-shot accuracy its numbers are read against. This module imports nothing, so any layer can use it.
"""

from __future__ import annotations

BASE = "base"
NEW = "new"
MAPPED = "mapped"
ORACLE = "oracle"
ROLES = (BASE, NEW, MAPPED, ORACLE)

IDENTITY = "identity"
"""The mapper of the module unchanged (the paper's transplant): the mapper of every base, new and oracle row."""

ZERO_SHOT = "zeroshot"
"""The method whose run every run is planned with (``RunSpec.zeroshot_reference``): what reuse is read against."""

REFERENCE_METHOD = "contcoop"
"""The paper's method (ContCoOp): the one its ablations (context length, depth) vary."""
