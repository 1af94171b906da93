"""MAC and R-MAC descriptors: R-MAC's regions pooled with fastmtl's roi_pool equal a loop of
slices, the regions cover the map with the paper's sizes."""

import pytest
import torch
import torch.nn.functional as F

from fastmtl.models.descriptors import mac, rmac, rmac_regions
from tests.utils import compiled_only


def test_regions_cover_the_map_at_each_level():
    regions = rmac_regions(7, 10, levels=3)
    assert regions[:, :2].min() == 0 and regions[:, 2].max() == 9 and regions[:, 3].max() == 6
    sides = (regions[:, 2] - regions[:, 0] + 1).unique().tolist()
    assert sides == [3.0, 4.0, 7.0]  # 2 min(H, W) / (l + 1), l = 1, 2, 3 (floor)
    assert bool(((regions[:, 2] - regions[:, 0]) == (regions[:, 3] - regions[:, 1])).all())  # squares
    assert len(rmac_regions(1, 1)) == 1
    with pytest.raises(ValueError, match="levels"):
        rmac_regions(4, 4, levels=0)


@compiled_only
def test_rmac_equals_a_loop_over_slices(gen):
    f = torch.rand(3, 5, 8, 6, generator=gen)
    want = []
    for i in range(3):
        acc = torch.zeros(5)
        for x1, y1, x2, y2 in rmac_regions(8, 6).long().tolist():
            acc += F.normalize(f[i, :, y1 : y2 + 1, x1 : x2 + 1].amax((1, 2)), dim=0)
        want.append(F.normalize(acc, dim=0))
    torch.testing.assert_close(rmac(f), torch.stack(want))
    torch.testing.assert_close(mac(f), F.normalize(f.flatten(2).amax(2), dim=1))
