"""Compress a trained LeNet-5 (Fashion-MNIST) with tensorial layers (TNN paper pipeline).

  python -m experiments.main --config=configs/compress_lenet5.py:format=rcp,rate=0.1 \
      --workdir=runs/compress/lenet5_rcp_0.1
  python -m experiments.main --config=configs/compress_lenet5.py:quick --workdir=/tmp/cq

The dense teacher is configs/lenet5.py (trained in `teacher_workdir`, default WORKDIR/teacher,
or reused if already there: scripts/tnn_lenet5_table.py shares one teacher across formats).
conv2, fc1 and fc2 are decomposed (conv1 and fc3 stay dense) to `rate` of their parameters in
`format` (cp, tk, tt, tr, rcp, rtk, rtt, rtr; the fc layers use the Linear layer's variant of
the same format: rtt is the TT-matrix), then phase 1 (400 steps per block) and phase 2
(940 steps of fine-tuning with distillation) run. Expected at rate 0.1: about 89-90% test
accuracy after phase 2 against 90.6% dense (docs/results/tnn_lenet5.md has the measured
table). `quick`: quick teacher, 40 steps per block, 40 fine-tuning steps, ~1 minute.

Args: quick, format, rate, phase1_steps, phase2_steps, kd, compare (end-to-end comparison
curves), teacher_workdir, seed.
"""

from configs import common, lenet5


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        format="rcp",
        linear_format="",
        rate=0.1,
        phase1_steps=400,
        phase2_steps=1880,
        kd=1.0,
        compare=False,
        curve_every=0,
        teacher_workdir="",
        seed=0,
    )
    c = common.compress_config("compress_lenet5")
    c.teacher = lenet5.get_config("quick" if args.quick else None)
    c.teacher_workdir = args.teacher_workdir
    c.seed = args.seed
    c.format = args.format
    c.linear_format = args.linear_format
    c.rate = args.rate
    c.batch_size = 128
    c.phase1.steps_per_block = args.phase1_steps
    c.phase1.learning_rate = 5e-3
    c.phase2.steps = args.phase2_steps
    c.phase2.learning_rate = 2e-3
    c.phase2.kd_weight = args.kd
    c.compare_end_to_end = args.compare
    c.curve_every = args.curve_every
    if args.quick:
        c.phase1.steps_per_block = 40
        c.phase2.steps = 40
        c.eval_batch_size = 1000
        c.log_every = 20
    return c
