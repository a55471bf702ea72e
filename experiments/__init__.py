"""Reproductions of the paper's claims and comparisons with other schedules, small enough for 2 CPU cores.

Each study is one module run from the repository root as `python -m experiments.<name>` (with `--quick` for a
smoke run); it writes a Markdown report and PNG plots into `docs/results/`.

- `nqm`: the noisy quadratic model of the paper's Section 3 (`simulate`, the Theorem 1 closed form).
- `nqm_study`: Figure 1, the Theorem 1 table and Figure 3 on the noisy quadratic model.
- `digits_study`: a small CNN on scikit-learn's digits with the `Trainer`, every schedule compared.
- `charlm_study`: a small character-level transformer LM (AdamW) on the Python standard library's
  own source text, every schedule compared.
- `saturation_study`: the saturation tests (the paper's and the default `trend`) on all three tasks with
  AutoDrop's defaults, against cosine given the run length, a constant lr and `reduce_lr_on_plateau`.

The studies use the public API (`AutoDrop`, `AutoDropConfig`, `AutoDropCallback`) like any user.
"""
