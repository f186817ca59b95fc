"""Compress a trained ViT (Fashion-MNIST): attention and MLP weights to a rate, block-wise
distillation per transformer block, then fine-tuning (the TNN paper's pipeline).

  python -m experiments.main --config=configs/compress_vit.py:format=ttm,rate=0.1 \
      --workdir=runs/compress/vit_ttm_0.1 --config.teacher_workdir=runs/vit/dense
  python -m experiments.main --config=configs/compress_vit.py:quick --workdir=/tmp/cvq

The dense teacher is configs/vit.py (trained in `teacher_workdir`, default WORKDIR/teacher,
or reused if it is there already). Every attention projection (query, key, value, out) and
MLP weight (fc1, fc2) becomes `format` (ttm, tucker, cp, tt, tr, or a reshaped format) at
`rate` of its dense parameters, initialised by decomposing the trained kernel; the patch
embedding and the head stay dense. Phase 1 trains one transformer block at a time
(`phase1_steps` Adam steps on the MSE to the teacher's block output), phase 2 fine-tunes end
to end with distillation (`phase2_steps`). docs/results/vit.md has the measured table.
`quick`: the quick teacher, 5 steps per block, 10 fine-tuning steps (checks the pipeline).

Args: quick, format, rate, phase1_steps, phase2_steps, kd, teacher_workdir, dataset, seed.
"""

from configs import common, vit


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        format="ttm",
        rate=0.1,
        phase1_steps=150,
        phase2_steps=938,
        kd=1.0,
        teacher_workdir=common.unset(str),
        dataset=common.unset(str),
        seed=0,
    )
    teacher = vit.get_config("quick" if args.quick else None)
    c = common.compress_config("compress_vit", teacher)
    if args.dataset is not None:  # else the teacher config's dataset
        c.data.name = args.dataset
    c.teacher_workdir = args.teacher_workdir
    c.seed = args.seed
    c.format = args.format
    c.rate = args.rate
    c.batch_size = 128
    c.phase1.steps_per_block = args.phase1_steps
    c.phase1.learning_rate = 1e-3
    c.phase2.steps = args.phase2_steps
    c.phase2.learning_rate = 5e-4
    c.phase2.kd_weight = args.kd
    if args.quick:
        c.phase1.steps_per_block = 5
        c.phase2.steps = 10
        c.phase2.checkpoint_every = 10
        c.eval_batch_size = 500
        c.log_every = 5
    return c
