"""``identity``: the module meets the target unchanged (the paper's transplant, bit for bit)."""

from __future__ import annotations

from dataclasses import dataclass

from upgradebench import NONE, VLM, Mapper, Module, Refused, TargetData, width_problem


@dataclass
class IdentityConfig:
    """No settings."""


class Identity(Mapper[IdentityConfig]):
    """The module as it was saved; refused where a width it declares does not fit the target (both widths named)."""

    version = "1"
    budget = NONE
    Config = IdentityConfig
    description = "The module unchanged (the paper's transplant); refused across a width change."

    def supports(self, module: Module, source: VLM, target: VLM, config: IdentityConfig) -> str | None:
        problem = width_problem(module, target)
        return f"identity cannot carry it: {problem}" if problem else None

    def map(self, module: Module, source: VLM, target: VLM, data: TargetData, config: IdentityConfig,
            seed: int) -> Module:
        problem = self.supports(module, source, target, config)
        if problem:
            raise Refused(f"{problem}.", "map it with vocab-map or feature-map (upgradebench mappers list)")
        return module
