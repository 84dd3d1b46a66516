#!/usr/bin/env bash
# Regenerates every committed reference result of the embedded world: runs (parquet), drift, depth study,
# figures, tables, the leaderboard and its re-scoring on the held-out target (rescored/). Finished runs (and
# re-scored rows) are skipped, so an interrupted call can be repeated.
# Runs written by an older result schema (no prediction ledger) are brought up to date on the way: each saved
# module is re-evaluated without refitting, its top-1 checked against the stored row, its ledger written.
#   bash results/regenerate.sh            (from the repository root, with upgradebench installed)
#   JOBS=2 bash results/regenerate.sh     (runs of a sweep in two processes)
set -euo pipefail
cd "$(dirname "$0")"
upgradebench zoo install  # the shipped weights (`zoo build` retrains them and compares)
upgradebench sweep --grid grids/main.yaml --results runs --jobs "${JOBS:-1}"
upgradebench sweep --grid grids/ablations.yaml --results runs --jobs "${JOBS:-1}"
upgradebench sweep --grid grids/oracle.yaml --results runs --jobs "${JOBS:-1}"
upgradebench sweep --grid grids/oracle-coop.yaml --results runs --jobs "${JOBS:-1}"
# The upgrade matrix (docs/mappers.md): the main grid's modules carried to one toy target of each upgrade kind by
# every built-in mapper, oracle fits on those targets, and the chained upgrade toy-clip -> toy-eva -> toy-eva-drift.
upgradebench sweep --grid grids/matrix.yaml --results runs --jobs "${JOBS:-1}"
upgradebench sweep --grid grids/matrix-lora.yaml --results runs --jobs "${JOBS:-1}"
upgradebench sweep --grid grids/matrix-chain.yaml --results runs --jobs "${JOBS:-1}"
upgradebench analyze depth --dataset toy-pattern --layers 0-3 --target toy-eva --target toy-eva-drift \
    --seed 1 --seed 2 --seed 3 --results runs
upgradebench analyze drift --source toy-clip --target toy-eva --target toy-eva-drift --out analysis/drift.parquet
upgradebench figures --results runs --drift analysis/drift.parquet --out figures --force
# The upgrade matrix's table and drift predictors (the predictors load each pair's models: --model-measures).
upgradebench analyze matrix --results runs --model-measures --out figures --force --json > analysis/matrix.json
# Every saved module (not the oracle fits) also evaluated, without retraining, on the held-out toy target
# toy-eva-text (built here on first use: 3.8 CPU-minutes; re-scoring the 240 modules: about 3 CPU-minutes,
# extrapolated from 36, see README); rows of role 'rescore' go to rescored/, never into runs/.
# The ranking's protocol is the main grid's cells (runs/ also holds the matrix's targets on two tasks).
upgradebench leaderboard build --results runs --figures figures --out leaderboard --force \
    --protocol grids/main.yaml --rescore-on toy-eva-text --rescored rescored
