"""Benchmarks of fastmtl against the alternatives a user has; run with ``fastmtl bench``.

Each op family has a module with ``cases(device, quick) -> list[Case]`` (see
:mod:`fastmtl.bench.harness`), or another function named as ``"module:function"``; add it to
:data:`REGISTRY` and the CLI finds it. A case
marked ``full_only`` runs only with ``--full``. The registry
holds module names, imported only when that family runs, so ``fastmtl --help`` does not
import torchvision or torch.compile's machinery.
"""

import importlib

__all__ = ["REGISTRY", "load_cases"]

REGISTRY = {
    "box_iou": "fastmtl.bench.cases_box_iou",
    "nms": "fastmtl.bench.cases_nms",
    "multiclass_nms": "fastmtl.bench.cases_multiclass_nms",
    "roi_align": "fastmtl.bench.cases_roi:align_cases",
    "roi_pool": "fastmtl.bench.cases_roi:pool_cases",
    "style_loss": "fastmtl.bench.cases_gram",
    "yolo": "fastmtl.bench.cases_yolo",
    "coco_evaluate": "fastmtl.bench.cases_coco",
    "triplet": "fastmtl.bench.cases_triplet",
    "segmentation": "fastmtl.bench.cases_segmentation",
    "mtl": "fastmtl.bench.cases_mtl",
}


def load_cases(op: str, device: str, quick: bool = False, full: bool = True) -> list:
    """The cases of one registered op family on ``device`` ("cpu" or "cuda").

    ``full=False`` leaves out the cases marked ``full_only`` (the default ``fastmtl bench``
    runs a representative subset; ``--full`` runs them all).
    """
    if op not in REGISTRY:
        raise KeyError(f"unknown benchmark {op!r}; registered: {sorted(REGISTRY)}")
    module, _, function = REGISTRY[op].partition(":")
    cases = getattr(importlib.import_module(module), function or "cases")(device, quick)
    return [c for c in cases if full or not getattr(c, "full_only", False)]
