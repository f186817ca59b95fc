"""Bayesian rank determination for a small DLRM's tensorized embedding tables.

  python -m experiments.main --config=configs/bayes_dlrm.py --workdir=/tmp/bdlrm
  python -m experiments.main --config=configs/bayes_dlrm.py:format=tt --workdir=/tmp/bdlrm_tt
  python -m experiments.main --config=configs/bayes_dlrm.py:prior=none --workdir=...  # fixed
  python -m experiments.main --config=configs/bayes_dlrm.py:quick --workdir=/tmp/bdlrm_q

The DLRM of configs/dlrm.py (embed_dim 16) on `synthetic_clicks` whose planted embeddings
have matrix rank 2. Default `vocab=small`: four tables of 200 ids drawn from Zipf(`zipf`=1),
131,072 clicks; `vocab=criteo_like`: tables of 1000, 1000, 500, 200 ids, Zipf(1), 32,768
clicks (mostly rare ids: no model we tried learns the embeddings there). Until 2026-12-01
this docstring said the small tables' ids were uniform: the config asked for
`zipf_exponent = 0.0`, but the trainer dropped every 0 as "not set" and the data were
Zipf(1); the published results were measured on Zipf(1), which is now the explicit default.
`zipf=0` gives the uniform ids: there no model we tried learns the interaction (all stay at
the no-interaction accuracy, dense included; docs/results/bayes.md). Tables tensorized
as TT-matrix (vocab modes 5x5x8 for 200 ids, 10x10x10 / 5x10x10 for the larger ones,
features 2x2x4, max rank 16); `format=tt|cp|tucker` keep the 16 features as one mode.
Trained by the `bayes` trainer (MAP/EM lambdas, half-Cauchy eta 1, prior weight 1, Adam
2e-3 cosine, batch 256, 2,000 steps); `prior=none` trains the same tables at fixed max rank
without a prior (`train` trainer).

Where the planted rank can show: the tables have matrix rank 2 with random vocabulary
factors, so only a bond that separates all vocabulary modes from the embedding mode has
rank 2: TT's last bond (and Tucker's embedding-mode rank); TT-matrix bonds mix vocabulary
and feature modes and have no planted low rank. A prior weight of 3 or more (without a
warm-up) collapses whole tables: every lambda of a table shrinks together and the
embeddings are switched off (test accuracy falls to the no-embedding level ~0.62).

Measured results: docs/results/bayes.md.

Args: quick, format (ttm, tt, cp, tucker), prior (half_cauchy, log_uniform, none), eta,
inference (map, svi), max_rank, prior_weight, steps, seed, vocab (small, criteo_like), zipf
(the ids' Zipf exponent, 0 = uniform).
"""

from configs import common

# Vocabularies of the synthetic click tables and their factorisations (row-major).
_VOCAB = (1000, 1000, 500, 200)
_EMBED_DIM = 16
_VOCAB_MODES = {1000: (10, 10, 10), 500: (5, 10, 10), 200: (5, 5, 8)}
# vocab="small": four 200-id tables (131,072 clicks); the criteo_like tables are mostly rare ids
_SMALL_VOCAB = (200, 200, 200, 200)
_TTM_FEATURES = (2, 2, 4)


def _table_spec(fmt: str, vocab: int, max_rank: int) -> dict:
    spec = {"format": fmt, "rank": max_rank, "vocab_modes": _VOCAB_MODES[vocab]}
    if fmt == "ttm":
        spec["feature_modes"] = _TTM_FEATURES
    return spec


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        format="ttm",
        prior="half_cauchy",
        eta=1.0,
        inference="map",
        max_rank=16,
        prior_weight=1.0,
        steps=2000,
        seed=0,
        vocab="small",
        zipf=1.0,
    )
    if args.vocab not in ("criteo_like", "small"):
        raise ValueError(f"vocab={args.vocab!r}: choose criteo_like or small")
    vocab = _VOCAB if args.vocab == "criteo_like" else _SMALL_VOCAB
    if args.format not in ("ttm", "tt", "cp", "tucker"):
        raise ValueError(f"format={args.format!r}: choose one of ttm, tt, cp, tucker")
    c = common.base_config(f"bayes_dlrm_{args.format}")
    common.apply_prior(c, args)
    c.task = "ctr"
    c.seed = args.seed
    c.data.name = "synthetic_clicks"
    c.data.num_dense = 13
    c.data.vocab_sizes = vocab
    c.data.embed_rank = 2
    c.data.embed_dim = _EMBED_DIM
    c.data.num_train = 32768
    c.data.num_test = 8192
    c.data.zipf_exponent = args.zipf  # 0: uniform ids
    if args.vocab == "small":
        c.data.num_train = 131072
    c.model.name = "dlrm"
    c.model.kwargs = {"embed_dim": _EMBED_DIM}
    c.model.layers.overrides = {
        f"emb{t}": _table_spec(args.format, v, args.max_rank) for t, v in enumerate(vocab)
    }
    c.optimizer.learning_rate = 2e-3
    c.optimizer.schedule = "cosine"
    c.batch_size = 256
    c.eval_batch_size = 2048
    c.num_steps = args.steps
    c.log_every = 100
    c.eval_every = None
    c.checkpoint_every = 1000
    if args.quick:
        c.data.num_train = 8192
        c.data.num_test = 2048
        c.num_steps = 300
        c.log_every = 50
        c.checkpoint_every = 300
    return c
