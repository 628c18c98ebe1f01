"""Python client of the Kasmina host (``kasmina-host``), the node-local
sidecar that runs Esper's seed kernels.

``kasmina_host`` needs only the standard library and NumPy:

    from kasmina_host import Client
    c = Client("unix:///run/kasmina/host.sock")        # or "http://127.0.0.1:8470"
    c.declare_layer("layer1", num_seeds=4, input_shape=[64], output_shape=[32])
    c.load_kernel("layer1", 0, "mlp/kernel.safetensors")
    c.set_alpha("layer1", 0, 0.5)
    out = c.forward("layer1", x, default=d).output

``kasmina_host.torch`` (PyTorch, imported only when used) has
``KasminaHostLayer``, a drop-in for esperlite's ``KasminaLayer`` whose seeds
run on the host, and ``wrap``, like ``esper.wrap``.
"""

from .client import DEFAULT_URL, BackwardResult, Client, ForwardResult, stable_layer_id
from .errors import KasminaHostError, KasminaHostUnavailable, KasminaProtocolError
from .wire import InferResponse

__all__ = [
    "BackwardResult",
    "Client",
    "DEFAULT_URL",
    "ForwardResult",
    "InferResponse",
    "KasminaHostError",
    "KasminaHostUnavailable",
    "KasminaProtocolError",
    "stable_layer_id",
]

__version__ = "0.1.0"
