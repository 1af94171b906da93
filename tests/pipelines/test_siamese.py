"""The Siamese digits pipeline, short: new images of the trained digits verify far better than
raw pixels, unseen digits above chance; the ROC plot is written."""

from fastmtl.pipelines.siamese import SiameseConfig, train_siamese
from tests.utils import compiled_only

pytestmark = compiled_only


def test_short_training_separates_identities(tmp_path):
    result = train_siamese(SiameseConfig(steps=60, progress=False, out_dir=str(tmp_path)))
    assert result.seen_verification.auc > 0.95 > result.seen_baseline.auc
    assert result.verification.auc > 0.6  # digits never trained on: above chance
    assert result.identification["seen"] > 0.9 > result.identification["baseline_seen"]
    assert result.roc_png.exists() and result.roc_png.stat().st_size > 1000
    assert len(result.history) == 60 and result.history[0]["loss"] > 0
