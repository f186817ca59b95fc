"""A small DLRM (bottom MLP, embedding tables, dot interaction, top MLP) on synthetic clicks.

  python -m experiments.main --config=configs/dlrm.py --workdir=/tmp/dlrm
  python -m experiments.main --config=configs/dlrm.py:format=ttm,rank=8 --workdir=/tmp/dlrm_ttm
  python -m experiments.main --config=configs/dlrm.py:quick --workdir=/tmp/dlrm_quick

The click data have a planted low-rank embedding structure (input_pipeline's
"synthetic_clicks"). Embedding tables are tensorized with `format` (cp, tucker, tt, ttm);
the MLPs stay dense unless `mlp_format` says otherwise. Expected: test accuracy close to
the Bayes rate of the planted model (see summary.json), dense and TT-matrix alike. `quick`:
2,048 clicks, 100 steps.

Args: quick, format, rank, compression, mlp_format, embed_dim, epochs, seed.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        format="dense",
        rank=common.unset(int),
        compression=common.unset(float),
        mlp_format="dense",
        embed_dim=16,
        epochs=10.0,
        seed=0,
    )
    c = common.base_config("dlrm")
    c.task = "ctr"
    c.seed = args.seed
    c.data.name = "synthetic_clicks"
    c.data.num_dense = 13
    c.data.vocab_sizes = (1000, 1000, 500, 200)
    c.data.embed_rank = 2
    c.data.zipf_exponent = 1.0  # 0: uniform ids
    c.data.num_train = 32768
    c.data.num_test = 8192
    c.model.name = "dlrm"
    c.model.kwargs = {"embed_dim": args.embed_dim}
    layers = c.model.layers
    layers.default.format = args.mlp_format
    layers.default.embed_format = args.format
    layers.default.rank = args.rank
    layers.default.compression = args.compression
    c.optimizer.learning_rate = 2e-3
    c.batch_size = 256
    c.eval_batch_size = 2048
    c.num_epochs = args.epochs
    c.log_every = 100
    c.eval_every = 640
    c.checkpoint_every = 640
    if args.quick:
        c.data.num_train = 2048
        c.data.num_test = 1024
        c.num_steps = 100
        c.batch_size = 128
        c.log_every = 50
        c.eval_every = None
        c.checkpoint_every = 50
    return c
