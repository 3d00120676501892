"""The networks, in pure JAX and Flax NNX (no Orbax, TFDS or tqdm): the paper's CapsNet
(`model`), its layers (`layers`), the baseline CNN (`cnn`), Efficient-CapsNet (`efficient`,
Mazzia et al. 2021), convolution (`conv`), the losses (`losses`), the input checks (`inputs`) and
what an objective returns (`objective`).

    from capsjax.nn import CapsNet
    net = CapsNet(rngs=nnx.Rngs(0))          # 28x28x1 MNIST, 3 routing iterations
    out = net(images)                        # images uint8 or float in [0, 1], [B, 28, 28, 1]
"""

from capsjax.core.squash import safe_length, squash
from capsjax.nn import losses
from capsjax.nn.cnn import BaselineCNN
from capsjax.nn.efficient import EfficientCapsNet
from capsjax.nn.model import CapsNet, CapsNetOutput, count_params

__all__ = ["BaselineCNN", "CapsNet", "CapsNetOutput", "EfficientCapsNet", "count_params", "losses",
           "safe_length", "squash"]
