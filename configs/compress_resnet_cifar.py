"""Compress a trained CIFAR ResNet (default ResNet-32) stage by stage (TNN paper pipeline).

  python -m experiments.main --config=configs/compress_resnet_cifar.py:format=rcp,rate=0.1 \
      --workdir=runs/compress/resnet32_rcp_0.1
  python -m experiments.main --config=configs/compress_resnet_cifar.py:quick --workdir=/tmp/crq

The teacher is configs/resnet_cifar.py (CIFAR-10 from $TNJAX_DATA_DIR or TFDS; GPU work).
Every conv but the first is decomposed to `rate` of its parameters in `format` (fc stays
dense); phase 1 trains one residual stage at a time against the teacher's stage output,
phase 2 fine-tunes end to end with distillation. Expected (paper, RCP at 10%): within a
few points of the dense 92.5%; not measured here (no CIFAR-10 offline, no accelerator).
`quick`: ResNet-20 on synthetic 32x32 images, teacher 20 steps, 10 steps per stage,
10 fine-tuning steps (checks the pipeline end to end; accuracy meaningless).

Args: quick, depth, format, rate, phase1_steps, phase2_steps, kd, teacher_workdir, dataset
(default: the teacher config's; the teacher trains on the student's data unless
`--config.teacher.data.*` says otherwise), seed.
"""

from configs import common, resnet_cifar


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        quick=False,
        depth=32,
        format="rcp",
        rate=0.1,
        phase1_steps=2000,
        phase2_steps=20000,
        kd=1.0,
        teacher_workdir=common.unset(str),
        dataset=common.unset(str),
        seed=0,
    )
    teacher = resnet_cifar.get_config("quick" if args.quick else f"depth={args.depth}")
    c = common.compress_config(f"compress_resnet{args.depth}_cifar", teacher)
    if args.dataset is not None:  # else the teacher config's dataset
        c.data.name = args.dataset
    c.teacher_workdir = args.teacher_workdir
    c.seed = args.seed
    c.format = args.format
    c.rate = args.rate
    c.augment = "cifar"
    c.batch_size = 128
    c.phase1.steps_per_block = args.phase1_steps
    c.phase1.learning_rate = 1e-3
    c.phase2.steps = args.phase2_steps
    c.phase2.learning_rate = 1e-3
    c.phase2.kd_weight = args.kd
    if args.quick:
        c.augment = "none"
        c.batch_size = 32
        c.eval_batch_size = 64
        c.phase1.steps_per_block = 10
        c.phase2.steps = 10
        c.phase2.checkpoint_every = 10
        c.log_every = 5
        c.rate = 0.2
    return c
