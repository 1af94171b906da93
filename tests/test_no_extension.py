"""fastmtl without its compiled extension: imports, warns once, and computes the same values."""

import subprocess
import sys
import textwrap


def test_import_and_ops_without_extension():
    # A fresh interpreter in which `fastmtl._C` cannot be imported, as when it was never built.
    script = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["fastmtl._C"] = None
        import torch
        import fastmtl
        assert not fastmtl.has_compiled_ops() and not fastmtl.has_cuda_ops()
        b1 = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
        b2 = torch.tensor([[1.0, 1.0, 2.0, 3.0]])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            iou = fastmtl.ops.box_iou(b1, b2)
            fastmtl.ops.giou_loss(b1, b2.expand(2, 4))
        assert sum("pure-PyTorch fallback" in str(w.message) for w in caught) == 1, caught
        assert torch.allclose(iou, torch.tensor([[0.2], [0.5]])), iou
        boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1], [5.0, 5.0, 6.0, 6.0]])
        scores = torch.tensor([0.9, 0.8, 0.7])
        det = fastmtl.ops.multiclass_nms(
            boxes[None], scores[None], 0.5, score_threshold=0.0, max_detections=4
        )
        assert det.counts.tolist() == [2] and det.indices.tolist() == [[0, 2, -1, -1]], det
        keep, new = fastmtl.ops.soft_nms(boxes, scores)
        assert keep.tolist() == [0, 2, 1], keep
        assert torch.allclose(new, torch.tensor([0.9, 0.7, 0.8 * (1 - 4 / 4.2)])), new
        x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 1, 2).requires_grad_()
        assert fastmtl.ops.gram_matrix(x, normalize=False).tolist() == [[[5.0, 11.0], [11.0, 25.0]]]
        loss = fastmtl.ops.style_loss(x, torch.zeros(2, 2))
        assert abs(loss.item() - 892 / 64) < 1e-4, loss
        loss.backward()
        assert x.grad.shape == x.shape
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
