"""Multi-task training (segmentation + depth on the scenes) with MTLTrainer, in one process or
data-parallel under torchrun.

    python examples/mtl_ddp.py                                    # one process
    torchrun --nproc_per_node=2 examples/mtl_ddp.py               # 2 processes here (gloo on CPU)
    torchrun --nproc_per_node=8 examples/mtl_ddp.py --device cuda # 8 GPUs (nccl)
    # two machines, 8 GPUs each: the same command on both, --node_rank=0 on HOST0, 1 on the other
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST0 --master_port=29500 --nproc_per_node=8 \\
        examples/mtl_ddp.py --device cuda

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; this script joins the process
group and MTLTrainer wraps the model in DistributedDataParallel. ``--batch-size`` is the global
batch: each process takes its share, and the result equals one process on the whole batch.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastmtl.data.composite import CompositeConfig
from fastmtl.data.scenes import SceneDataset
from fastmtl.models.segmentation import UNet
from fastmtl.mtl import DWA, FAMO, FixedWeighting, GradNorm, HardSharing, MTLTrainer, UncertaintyWeighting

TASKS = ("seg", "depth")
WEIGHTINGS = {
    "fixed": lambda: FixedWeighting({"seg": 1.0, "depth": 1.0}),
    "uncertainty": lambda: UncertaintyWeighting({"seg": "classification", "depth": "regression"}),
    "dwa": lambda: DWA(TASKS),
    "gradnorm": lambda: GradNorm(TASKS),
    "famo": lambda: FAMO(TASKS),
}


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weighting", choices=sorted(WEIGHTINGS), default="uncertainty")
    p.add_argument("--gradient", choices=("none", "pcgrad", "mgda"), default="none")
    p.add_argument("--space", choices=("representation", "parameters"), default="representation")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8, help="the global batch")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--checkpoint", default=None, help="save here as it goes; resume from it if present")
    p.add_argument("--checkpoint-every", type=int, default=20)
    return p.parse_args()


def join_process_group(device: str) -> torch.device:
    if "LOCAL_RANK" not in os.environ:
        return torch.device(device)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device != "cuda":
        return torch.device("cpu")
    local = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(local)
    return local


def scenes(n: int, size: int) -> tuple:
    data = SceneDataset(n, config=CompositeConfig(image_size=size), coarse=True)
    items = [data[i] for i in range(n)]
    images = torch.stack([im for im, _ in items])
    return (
        images,
        {
            "seg": torch.stack([t["mask"] for _, t in items]),
            "depth": torch.stack([t["depth"] for _, t in items]),
        },
        data.num_classes,
    )


def model(classes: int) -> HardSharing:
    torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    body = UNet(3, 1, depth=3, width=16)
    body.head = nn.Identity()  # the shared body ends at the decoder's last feature map
    c = body.out_channels
    return HardSharing(body, {"seg": nn.Conv2d(c, classes + 1, 1), "depth": nn.Conv2d(c, 1, 1)})


def main() -> None:
    args = arguments()
    device = join_process_group(args.device)
    images, targets, classes = scenes(args.images, args.size)
    net = model(classes).to(device)
    weighting = WEIGHTINGS[args.weighting]()
    opt = torch.optim.AdamW([*net.parameters(), *weighting.parameters()], lr=3e-3)
    loss_fns = {"seg": F.cross_entropy, "depth": lambda out, y: F.l1_loss(out.squeeze(1), y)}
    trainer = MTLTrainer(
        net, loss_fns, weighting, opt, gradient=args.gradient, space=args.space, amp=args.amp
    )
    if args.checkpoint and os.path.exists(args.checkpoint):
        trainer.load(args.checkpoint)
    every = args.checkpoint_every if args.checkpoint else 0
    history = trainer.fit(
        images, targets, args.steps, args.batch_size, checkpoint=args.checkpoint, checkpoint_every=every
    )
    if dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        first, last = history["losses"][:5].mean(0).tolist(), history["losses"][-5:].mean(0).tolist()
        for t, a, b in zip(TASKS, first, last):
            print(f"{t}: loss {a:.3f} -> {b:.3f}, final weight {history['weights'][-1][TASKS.index(t)]:.3f}")


if __name__ == "__main__":
    main()
