"""benchmarks/networks.py, the network-choice table: every variant is a network the registry builds from its
preset, the paper's two are exactly the paper demo's runs."""

from __future__ import annotations

import networks as bench
import pytest
from sscjax.cli.demo import NETWORK_CHOICES, demo_config

# torchvision-sized networks: VGG11-3D and VGG16-3D at base 8 with the 1024-wide head, ConvNeXt-T with a 3-output
# head and a one-channel stem, EfficientNet-Lite0 likewise
PARAMETERS = {
    "vgg11_3d": 30_243_301,
    "vgg16_3d": 30_833_293,
    "convnext_tiny": 27_819_363,
    "efficientnet_lite0_scratch": 3_374_275,
}


@pytest.mark.parametrize("variant", bench.VARIANTS, ids=lambda v: v.key)
def test_every_variant_is_a_network_of_its_preset(variant, tmp_path):
    config = bench.variant_config(variant, tmp_path)
    assert (config.net, config.preset, config.fold) == (variant.net, variant.preset, 0)
    count = bench.parameters(config)
    assert count == PARAMETERS.get(variant.key, count) and count > 100_000


def test_the_papers_networks_are_the_paper_demos_runs(tmp_path):
    by_key = {v.key: v for v in bench.VARIANTS}
    for key, net in (("vgg11_3d", "lnet"), ("convnext_tiny", "snet")):
        assert bench.variant_config(by_key[key], tmp_path) == demo_config(net, NETWORK_CHOICES["paper"], tmp_path, 0)
    lite0 = bench.variant_config(by_key["efficientnet_lite0_scratch"], tmp_path)
    convnext = bench.variant_config(by_key["convnext_tiny"], tmp_path)
    assert lite0.train == convnext.train and (lite0.balanced, lite0.pretrained) == (False, "none")
