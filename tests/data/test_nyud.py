"""The NYUD-v2 layout loader on a tiny folder the test writes, and on real pixels (scikit-image's
stereo pair with its disparity as depth, its horse silhouette as a label mask)."""

import numpy as np
import pytest
import torch

from fastmtl.data.nyud import NYUDFolder

Image = pytest.importorskip("PIL.Image")


def _write(root, stem, rgb, labels=None, depth_mm=None, depth_m=None):
    for sub, wanted in (
        ("images", True),
        ("labels", labels is not None),
        ("depth", depth_mm is not None or depth_m is not None),
    ):
        if wanted:
            (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(root / "images" / f"{stem}.png")
    if labels is not None:
        Image.fromarray(labels).save(root / "labels" / f"{stem}.png")
    if depth_mm is not None:
        Image.fromarray(depth_mm.astype(np.uint16)).save(root / "depth" / f"{stem}.png")
    if depth_m is not None:
        np.save(root / "depth" / f"{stem}.npy", depth_m)


def test_tiny_folder(tmp_path, gen):
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    rgb = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, 41, (3, 5, 7), dtype=np.uint8)
    depth = rng.integers(0, 10000, (3, 5, 7))
    _write(tmp_path, "a", rgb[0], labels[0], depth_mm=depth[0])
    _write(tmp_path, "b", rgb[1], labels[1], depth_m=depth[1].astype(np.float32) / 1000)
    _write(tmp_path, "c", rgb[2], labels[2], depth_mm=depth[2])
    (tmp_path / "train.txt").write_text("c\na\n")
    data = NYUDFolder(tmp_path)
    assert data.stems == ["a", "b", "c"]
    for i in range(3):
        image, target = data[i]
        torch.testing.assert_close(image, torch.from_numpy(rgb[i]).permute(2, 0, 1).float() / 255)
        raw = torch.from_numpy(labels[i]).long()
        expected = torch.where(raw == 0, torch.tensor(255), raw - 1)  # void -> ignore, 1..40 -> 0..39
        assert torch.equal(target["mask"], expected)
        torch.testing.assert_close(target["depth"], torch.from_numpy(depth[i]).float() / 1000)
    split = NYUDFolder(tmp_path, "train", void_label=None)
    assert split.stems == ["c", "a"] and torch.equal(split[0][1]["mask"], torch.from_numpy(labels[2]).long())


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        NYUDFolder(tmp_path)
    _write(tmp_path, "a", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        NYUDFolder(tmp_path)[0]
    (tmp_path / "val.txt").write_text("a\nzz\n")
    with pytest.raises(FileNotFoundError, match="zz"):
        NYUDFolder(tmp_path, "val")
    with pytest.raises(ValueError, match="depth_scale"):
        NYUDFolder(tmp_path, depth_scale=0)


def test_real_pixels_from_scikit_image(tmp_path):
    data = pytest.importorskip("skimage.data")
    left, _right, disparity = data.stereo_motorcycle()
    focal_px, baseline_m = 1000.0, 0.1  # an assumed rig: depth = f B / disparity (inf: missing -> 0)
    depth_m = np.where(np.isfinite(disparity), focal_px * baseline_m / disparity, 0.0)
    _write(tmp_path / "stereo", "motorcycle", left, depth_mm=np.round(depth_m * 1000))
    horse = data.horse()  # True: background, False: the horse
    silhouette = np.where(horse, 1, 2).astype(np.uint8)  # 0 stays void; 1 background, 2 horse
    _write(
        tmp_path / "horse", "horse", np.repeat(silhouette[..., None] * 100, 3, 2).astype(np.uint8), silhouette
    )
    image, target = NYUDFolder(tmp_path / "stereo")[0]
    assert image.shape == (3, *left.shape[:2]) and "mask" not in target
    torch.testing.assert_close(
        target["depth"], torch.from_numpy(depth_m).float(), atol=6e-4, rtol=0
    )  # mm rounding
    assert float((target["depth"] == 0).float().mean()) < 0.2  # mostly measured, some holes
    image, target = NYUDFolder(tmp_path / "horse")[0]
    assert "depth" not in target
    assert torch.equal(target["mask"], torch.from_numpy(silhouette.astype(np.int64)) - 1)
    assert 0.1 < float(target["mask"].float().mean()) < 0.9
