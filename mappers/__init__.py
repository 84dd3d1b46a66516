"""The built-in mappers (``upgradebench.mappers``): how a module saved on the source meets a target.

Each is registered under the ``upgradebench.mappers`` entry-point group (``pyproject.toml``), exactly as a
third-party mapper is, and uses only the public harness API (``upgradebench``):

| mapper | budget | what it does |
|---|---|---|
| ``identity`` | none | the module unchanged (the paper's transplant); refused across a width change |
| ``vocab-map`` | none | token-embedding axes carried by a map between the two token tables on their shared vocabulary |
| ``feature-map`` | unlabeled | joint-space axes carried by a map between the two models' image features of |
| | | the task's training images (no labels); token axes as ``vocab-map`` |
| ``retune`` | labeled | another mapper's module, re-fitted on ``shots`` labeled target images per class |
"""
