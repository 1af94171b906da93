"""Data-parallel training (two CPU processes, gloo, DistributedDataParallel) equals training in one
process on the same data, for each kind of strategy: loss weightings whose state follows the
losses (DWA, uncertainty, FAMO) and those that need per-task gradients (PCGrad and MGDA in
representation and parameter space, GradNorm)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.mtl import _toy
from tests.mtl.test_trainer import _trainer

CONFIGS = [
    ("dwa", "none", "representation"),
    ("uncertainty", "pcgrad", "representation"),
    ("dwa", "mgda", "parameters"),
    ("gradnorm", "pcgrad", "representation"),
    ("famo", "none", "representation"),
]
STEPS, BATCH, N = 7, 8, 16  # 2 steps an epoch: DWA's weights move within the run


def _train(seed: int, config: tuple) -> list:
    x, y = _toy.data(N, seed)
    trainer = _trainer(seed, *config)
    trainer.fit(x, y, steps=STEPS, batch_size=BATCH, progress=False)
    return [p.detach().clone() for p in trainer.module.parameters()] + [trainer.history()["weights"]]


def _worker(rank: int, world: int, port: int, seed: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = [_train(seed, config) for config in CONFIGS]
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_two_process_training_equals_one_process(seed, tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, _free_port(), seed, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    for config, ddp_result in zip(CONFIGS, got):
        single = _train(seed, config)
        for a, b in zip(ddp_result, single):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, c=config: f"{c}: {m}")
