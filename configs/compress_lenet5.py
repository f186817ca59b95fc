"""Compress a trained LeNet-5 (Fashion-MNIST) with tensorial layers (TNN paper pipeline).

  python -m experiments.main --config=configs/compress_lenet5.py:format=rcp,rate=0.1 \
      --workdir=runs/compress/lenet5_rcp_0.1
  python -m experiments.main --config=configs/compress_lenet5.py:quick --workdir=/tmp/cq

The dense teacher is configs/lenet5.py (trained in `teacher_workdir`, default WORKDIR/teacher,
or reused if already there: scripts/tnn_lenet5_table.py shares one teacher across formats).
conv2, fc1 and fc2 are decomposed (conv1 and fc3 stay dense) to `rate` of their parameters in
`format` (cp, tk, tt, tr, rcp, rtk, rtt, rtr; the fc layers use the Linear layer's variant of
the same format: rtt is the TT-matrix), then phase 1 (400 steps per block) and phase 2
(1,880 steps of fine-tuning with distillation) run. Expected at rate 0.1: about 89-90% test
accuracy after phase 2 against 90.6% dense (docs/results/tnn_lenet5.md has the measured
table). `quick`: quick teacher, 40 steps per block, 40 fine-tuning steps, ~1 minute.

The teacher trains on the student's data (`dataset=`, `--config.data.*`) unless
`--config.teacher.data.*` says otherwise.

Args: quick, format, linear_format, rate, phase1_steps, phase2_steps, kd, compare
(end-to-end comparison curves), curve_every, teacher_workdir, dataset, seed.
"""

from configs import common, lenet5


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        format="rcp",
        linear_format=common.unset(str),
        rate=0.1,
        phase1_steps=400,
        phase2_steps=1880,
        kd=1.0,
        compare=False,
        curve_every=common.unset(int),
        teacher_workdir=common.unset(str),
        dataset=common.unset(str),
        seed=0,
    )
    teacher = lenet5.get_config("quick" if args.quick else None)
    c = common.compress_config("compress_lenet5", teacher)
    if args.dataset is not None:  # else the teacher config's dataset
        c.data.name = args.dataset
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
