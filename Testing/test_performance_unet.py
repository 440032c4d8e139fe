"""The MONAI-free BasicUNet (inference/fast_unet.py) must equal MONAI's: same parameter names and shapes
(weights load unchanged) and the same outputs, for every norm, 2D and 3D, sizes that are not multiples of 16 (the padding path)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from MedTranslateLib.inference.fast_unet import BasicUNet

NORMS = {"instance": ("instance", {"affine": True}), "batch": "batch", "group": ("group", {"num_groups": 2}),
         "none": None}


@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 36, 44)), (2, (1, 1, 32, 34)), (3, (1, 1, 32, 32, 40))])
@pytest.mark.parametrize("norm", list(NORMS))
def test_same_parameters_and_outputs_as_monai(dims, shape, norm):
    from monai.networks.nets import BasicUNet as MonaiBasicUNet

    features = (4, 4, 8, 8, 16, 4)
    torch.manual_seed(0)
    reference = MonaiBasicUNet(spatial_dims=dims, in_channels=shape[1], out_channels=2, features=features,
                               norm=NORMS[norm], dropout=0.1, upsample="nontrainable").eval()
    fast = BasicUNet(dims, shape[1], 2, features, norm=NORMS[norm], dropout=0.1).eval()
    ref_state, fast_state = reference.state_dict(), fast.state_dict()
    assert list(ref_state) == list(fast_state)
    assert all(ref_state[k].shape == fast_state[k].shape for k in ref_state)
    fast.load_state_dict(ref_state)
    x = torch.randn(shape)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-5, atol=1e-5)


def test_import_does_not_load_monai():
    code = "import sys, MedTranslateLib.inference.fast_unet; print('monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
