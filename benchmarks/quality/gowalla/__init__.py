"""Gowalla quality table: does DSL beat the equal-budget small dense model where width matters?

    make bench-quality-gowalla                       # the whole grid, resumable (days on 2 CPU cores)
    python -m benchmarks.quality.gowalla --set run.threads=1            # the same, run directly
    python -m benchmarks.quality.gowalla --report-only                  # rebuild the table from what is finished
    python -m benchmarks.quality.gowalla --sweep-mf --set run.threads=1 # choose MF's lr / init_std on valid

Every run is a ``python -m train ... --resume`` subprocess in ``runs/bench-gowalla/<name>/`` (its
own process, so its peak memory is its own; its log in ``train.log``). A checkpoint is written at
every evaluation, so a stopped run (killed, machine gone) continues from its last evaluation when
the command is run again; finished runs are never trained again, and a run folder made with
another config is refused by name. After every run the table is rewritten:
``results/quality-gowalla.{json,md,png}`` lists what is finished, and marks what is running or
pending (with the epoch a stopped run reached).

The grid (cheap MF runs first): MF dense; MF at densities 0.1, 0.05, 0.2: small-dense, dsl,
dsl-nested, dsl-mixed, dsl-nmf (dsl from SparseRec's NMF mask; the best of the four DSL variants on
*valid* is "the chosen DSL variant"),
static, prune-finetune; a second seed for dsl-nmf and small-dense at 0.1 and 0.05; then LightGCN dense,
and at 0.2, 0.1, 0.05 small-dense and the LightGCN DSL variant (``--lightgcn-variant``), static at
0.1, the variant at 0.1 trained with ``model.mask_output``, and last a second seed of small-dense and
the variant at 0.2 (LightGCN's narrowest margin). Every masked run holds exactly its small-dense
rival's non-zeros (n_rows x round(density x 64)); masks move until ``sparsity.end_fraction`` of the
epoch cap, then settle, and only evaluations after the last mask update are selected.

One module per concern: ``spec`` (the grid: runs, order, flags, targets), ``sweep`` (MF's settings
chosen on valid), ``supervise`` (a resumable training child process), ``logs`` (what a run folder
says), ``verdicts`` (the question answered per cell), ``report`` (Markdown, plot, files), ``cli``.
"""
