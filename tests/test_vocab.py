"""The shared vocabulary: one contrast list, one label-set vocabulary (segmenter regions included)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from data_modules.volumes import tumour_mask
from tgrowth.errors import ConfigError, DataError
from tgrowth.vocab import label_set, label_set_name, region_names


def test_region_names_are_label_sets_with_brats_aliases():
    assert region_names(["wt", "tc", "et"]) == ["whole", "core", "enhancing"]
    assert region_names(["whole", "ET"]) == ["whole", "enhancing"]
    assert [label_set(r) for r in ("wt", "tc", "et")] == [(1, 2, 3), (1, 3), (3,)]
    assert label_set_name("TC") == "core" and label_set_name("oedema") is None
    for bad in (["tc", "wt"], ["whole", "necrosis"], []):
        with pytest.raises(ConfigError, match="model.regions must start with whole and use the label sets whole, core, "
                                              r"enhancing \(or their aliases wt, tc, et\), got"):
            region_names(bad)
    with pytest.raises(DataError, match="unknown tumour label set 'tumour'"):
        label_set("tumour")


def test_tumour_masks_count_the_brats2021_enhancing_label():
    seg = np.array([0, 1, 2, 3, 4])
    assert tumour_mask(seg, "core").tolist() == [False, True, False, True, True]
    assert tumour_mask(seg, [3]).tolist() == [False, False, False, True, True]
    assert tumour_mask(seg, [2]).tolist() == [False, False, True, False, False]
    assert tumour_mask(torch.tensor(seg), "et").tolist() == [False, False, False, True, True]


def test_config_help_stays_free_of_torch():
    # train-* --help does import torch: their model sections are read from the networks' constructors
    # (tgrowth.config.diffusion mirrors UNet/Segmenter/EncoderRegressor signatures), so they are not listed here
    code = ("import sys\nfrom tgrowth.cli import main\n"
            "for cmd in ('predict', 'synth', 'data-check'):\n"
            "    try:\n        main([cmd, '--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'numpy', 'data_modules.slices') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
