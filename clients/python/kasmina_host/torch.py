"""PyTorch side: ``KasminaHostLayer``, a drop-in for esperlite's
``KasminaLayer`` whose seeds run on the Kasmina host, and ``wrap``, like
``esper.wrap``.

The layer's default transform (``nn.Linear(input_size, output_size)``, or
the original ``nn.Conv2d`` for :class:`KasminaHostConv2dLayer`) runs in
PyTorch, with its weights trained as usual. The seeds run on the host, as
the layer model ``POST /v2/models/{layer_name}/infer``, through a
``torch.autograd.Function``: the forward sends ``x`` and the default's
output and gets the blend

    output = (1 − A)·default + Σ αᵢ·kᵢ(x),   A = Σ αᵢ  (every αᵢ divided by A when A > 1)

and the backward sends ``∂loss/∂output`` and gets ``∂loss/∂x`` (through the
seeds' kernels) and ``∂loss/∂default`` (``(1 − A)·∂loss/∂output``), so
``loss.backward()`` reaches both ``x`` and the default transform's weights.
The kernels' own weights are compiled artifacts and are not trained.

This is not esperlite's blend: esperlite's ``_blend_outputs`` computes
``(1 − A)·default + A·Σ αᵢ·kᵢ(x)``, weighting each seed by its alpha twice;
here each seed is weighted once, so a single seed at alpha 1 replaces the
default exactly.

Importing this module imports PyTorch; ``kasmina_host`` itself does not.
"""

from __future__ import annotations

try:
    import torch
    from torch import nn
    from torch.autograd.function import once_differentiable
except ImportError as e:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "kasmina_host.torch needs PyTorch, which is not installed (pip install torch, or apt-get install "
        "python3-torch); kasmina_host itself (Client) works without it") from e

import asyncio
import copy
import logging
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

from .client import Client, ForwardResult, URLOrClient, client_for
from .errors import KasminaProtocolError

__all__ = ["ESPERLITE_LOAD_ALPHA", "KasminaHostConv2dLayer", "KasminaHostLayer", "MorphableModel", "wrap"]

logger = logging.getLogger(__name__)

#: The alpha :meth:`KasminaHostLayer.load_kernel` gives a seed after
#: loading its kernel, unless told otherwise: esperlite's
#: ``min(confidence · 0.6, 0.5)`` with its default confidence 0.5.
ESPERLITE_LOAD_ALPHA = 0.3

#: Seed states in which a seed with a kernel contributes (SPEC: germinated,
#: training, grafting; fossilized only at alpha 1).
_LIVE_STATES = frozenset({"germinated", "training", "grafting"})

_FROM_SIZES: Any = object()  # sentinel: declare [input_size] → [output_size]


def _seed_active(seed: Dict[str, Any]) -> bool:
    if seed.get("kernel") is None:
        return False
    state = seed.get("state")
    if state in _LIVE_STATES:
        return True
    return state == "fossilized" and float(seed.get("alpha") or 0.0) >= 1.0


class _HostSeeds(torch.autograd.Function):
    """The seeds' share of the layer, computed on the host."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, default: torch.Tensor, layer: "KasminaHostLayer",  # type: ignore[override]
                keep: bool) -> torch.Tensor:
        res = layer._client.forward(layer.layer_name, x, default, keep=keep)
        layer._observe(res)
        out = torch.from_numpy(res.output)
        if tuple(out.shape) != tuple(default.shape):
            raise KasminaProtocolError(200, f"layer {layer.layer_name!r}: the host's output has shape {list(out.shape)}, "
                                            f"the default transform's {list(default.shape)}")
        ctx.layer = layer
        ctx.forward_id = res.forward_id
        ctx.x_like = (x.dtype, x.device)
        ctx.d_like = (default.dtype, default.device)
        ctx.result = res  # for A, when ∂loss/∂default is needed without a round trip
        return out.to(dtype=default.dtype, device=default.device)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        need_x, need_default = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = grad_default = None
        if need_x:
            if ctx.forward_id is None:
                raise RuntimeError(f"layer {ctx.layer.layer_name!r}: x needs a gradient but its forward was not kept on the host "
                                   "(it ran with gradients off or with an x that did not require them)")
            res = ctx.layer._client.backward(ctx.layer.layer_name, grad_output, forward_id=ctx.forward_id)
            ctx.layer.host_backward_calls += 1
            grad_x = torch.from_numpy(res.grad_input).to(dtype=ctx.x_like[0], device=ctx.x_like[1])
            if need_default:
                if res.grad_default is None:
                    raise KasminaProtocolError(200, f"layer {ctx.layer.layer_name!r}: the backward answer has no grad_default")
                grad_default = torch.from_numpy(res.grad_default).to(dtype=ctx.d_like[0], device=ctx.d_like[1])
        elif need_default:
            # ∂loss/∂default = (1 − A)·∂loss/∂output needs only A: no round
            # trip to the host when x needs no gradient.
            grad_default = grad_output * (1.0 - min(_effective_total(ctx.result, ctx.layer.layer_name), 1.0))
        return grad_x, grad_default, None, None


def _effective_total(res: ForwardResult, layer_name: str) -> float:
    if res.alpha_total is not None:
        return res.alpha_total
    if res.seeds:
        return float(sum(float(s.get("alpha") or 0.0) for s in res.seeds))
    if res.default_applied is not None:
        return 0.0  # no contributing seed
    raise KasminaProtocolError(200, f"layer {layer_name!r}: the host reported neither alpha_total nor its seeds")


class KasminaHostLayer(nn.Module):
    """esperlite's ``KasminaLayer`` with its seeds on the Kasmina host.

    Same constructor arguments as esperlite's, plus ``client`` (a
    :class:`kasmina_host.Client`, a URL string, or None for
    :meth:`Client.from_env`). Constructing the layer declares it on the
    host: ``PUT /v1/layers/{layer_name}`` with ``num_seeds`` and the shapes
    ``[input_size]`` → ``[output_size]`` (so the host checks every kernel
    loaded into it against them); a host that is down makes the
    constructor raise. Declaring is idempotent: a layer the host already
    has (a restarted training process, a second replica) keeps its seeds,
    and this layer uses them from its first forward.

    ``forward(x)``: the default transform runs in PyTorch. While no seed
    of the layer is active (no kernel loaded, as far as the layer last
    heard from the host), the host is not called at all and the output is
    ``default_transform(x)`` (esperlite's fast path). Otherwise the host
    computes the blend described in the module docstring, and
    ``loss.backward()`` flows through it. The host keeps what its backward
    needs (``keep_forward``) only when a gradient for ``x`` can be asked
    for: gradients enabled and ``x.requires_grad``. Under ``torch.no_grad()``
    or ``inference_mode`` nothing is kept; ``eval()`` alone does not stop it
    (gradients may still be asked for). When only the default transform's
    weights need gradients (``x`` is data), the backward needs no call to
    the host. A kept forward the host has evicted or expired (60 s by
    default) makes ``backward`` raise with the host's 404 message.

    Seeds changed by others (a bus command, another client) are picked up
    when the layer next reads its view from the host: at most every
    ``sync_interval`` seconds in ``forward`` (default 1 s; 0 checks before
    every forward; None never: call :meth:`refresh`), and after every
    control call made through the layer.

    The seeds' outputs are computed by the host in float32 whatever the
    dtype of ``x``; CUDA tensors are moved to the CPU for the trip and the
    result moved back.

    ``cache_size_mb`` and ``telemetry_enabled`` are accepted for
    compatibility and reported by :meth:`get_layer_stats`: the host has its
    own kernel cache (``--cache-bytes``) and publishes the seeds' health
    signals itself, from the outputs it computes.

    Extra keyword-only arguments: ``default_transform`` (any module mapping
    ``[batch, *input_shape]`` to ``[batch, *output_shape]``, in place of the
    ``nn.Linear``), ``input_shape``/``output_shape`` (the shapes declared on
    the host, per sample; ``None`` declares none; by default
    ``[input_size]``/``[output_size]`` with the ``nn.Linear`` and none with
    another default transform) and ``sync_interval``.
    """

    def __init__(self, input_size: int, output_size: int, num_seeds: int = 4, cache_size_mb: int = 128,
                 telemetry_enabled: bool = True, layer_name: str = "kasmina_layer", client: URLOrClient = None, *,
                 default_transform: Optional[nn.Module] = None, input_shape: Optional[Sequence[int]] = _FROM_SIZES,
                 output_shape: Optional[Sequence[int]] = _FROM_SIZES, sync_interval: Optional[float] = 1.0) -> None:
        super().__init__()
        if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
            raise ValueError(f"num_seeds {num_seeds!r}: want an integer ≥ 1")
        if sync_interval is not None and not sync_interval >= 0:
            raise ValueError(f"sync_interval {sync_interval!r}: want a number ≥ 0 or None")
        self.input_size = input_size
        self.output_size = output_size
        self.num_seeds = num_seeds
        self.layer_name = layer_name
        self.cache_size_mb = cache_size_mb
        self.telemetry_enabled = telemetry_enabled
        self.sync_interval = sync_interval
        self.default_transform = default_transform if default_transform is not None else nn.Linear(input_size, output_size)
        if input_shape is _FROM_SIZES:
            input_shape = [input_size] if default_transform is None else None
        if output_shape is _FROM_SIZES:
            output_shape = [output_size] if default_transform is None else None
        self._client = client_for(client)
        self.total_forward_calls = 0
        self.total_kernel_executions = 0  # contributing seeds summed over host forwards
        self.host_forward_calls = 0
        self.host_backward_calls = 0
        self._seeds: List[Dict[str, Any]] = []
        self._active = False
        self._last_sync = -math.inf
        view = self._client.declare_layer(layer_name, num_seeds=num_seeds, input_shape=input_shape,
                                          output_shape=output_shape)
        self._apply_view(view)
        logger.info("declared KasminaHostLayer %r with %d seeds on %s", layer_name, num_seeds, self._client.url)

    @property
    def client(self) -> Client:
        """The client this layer talks to its host through."""
        return self._client

    # -- state mirror ------------------------------------------------------

    def _apply_view(self, view: Any) -> None:
        seeds = view.get("seeds") if isinstance(view, dict) else None
        if seeds is None:  # a PUT answer without the seeds: read the full view
            view = self._client.layer(self.layer_name)
            seeds = view.get("seeds") if isinstance(view, dict) else None
        if not isinstance(seeds, list):
            raise KasminaProtocolError(200, f"layer {self.layer_name!r}: the layer view has no seeds list")
        self._seeds = [s for s in seeds if isinstance(s, dict)]
        self._active = any(_seed_active(s) for s in self._seeds)
        self._last_sync = time.monotonic()

    def refresh(self) -> Dict[str, Any]:
        """Reads the layer's view from the host (``GET /v1/layers/{name}``) and
        returns it; the layer then knows which seeds are active."""
        view = self._client.layer(self.layer_name)
        self._apply_view(view)
        return view

    def has_active_seeds(self) -> bool:
        """Whether a seed was active when the layer last heard from the host."""
        return self._active

    def _observe(self, res: ForwardResult) -> None:
        self.host_forward_calls += 1
        self.total_kernel_executions += len(res.seeds)

    def _check_seed(self, seed_idx: int) -> None:
        if isinstance(seed_idx, bool) or not isinstance(seed_idx, int) or not 0 <= seed_idx < self.num_seeds:
            raise ValueError(f"Invalid seed index: {seed_idx}")

    # -- forward -----------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.total_forward_calls += 1
        if self.sync_interval is not None and time.monotonic() - self._last_sync >= self.sync_interval:
            self.refresh()
        default = self.default_transform(x)
        if not self._active:
            return default
        keep = torch.is_grad_enabled() and x.requires_grad
        return _HostSeeds.apply(x, default, self, keep)

    # -- seeds (esperlite's API) -------------------------------------------

    async def load_kernel(self, seed_idx: int, artifact_id: str, *,
                          alpha: Optional[float] = ESPERLITE_LOAD_ALPHA) -> bool:
        """Loads ``artifact_id`` into seed ``seed_idx`` on the host; returns True
        or raises (:class:`kasmina_host.KasminaHostError` with the host's
        message, e.g. 404 for an unknown artifact, 422 for a kernel whose
        shapes are not the layer's).

        Fresh-seed alpha: a kernel loaded into a slot starts at alpha 0 on
        the host, which would contribute nothing. Like esperlite, which sets
        ``min(confidence · 0.6, 0.5)`` = 0.3 with its default confidence,
        this method then sets the seed's alpha to ``alpha``
        (:data:`ESPERLITE_LOAD_ALPHA`, 0.3, by default), so the seed
        contributes as soon as it is loaded. ``alpha=None`` keeps the alpha
        the slot had (set it with :meth:`set_seed_alpha`, before or after).

        The HTTP calls run in a worker thread, so the event loop is not blocked.
        """
        self._check_seed(seed_idx)

        def run() -> bool:
            self._client.load_kernel(self.layer_name, seed_idx, artifact_id)
            if alpha is not None:
                self._client.set_alpha(self.layer_name, seed_idx, _clamp_alpha(alpha))
            self.refresh()
            logger.info("loaded kernel %s into %s[%d]", artifact_id, self.layer_name, seed_idx)
            return True

        return await asyncio.to_thread(run)

    async def unload_kernel(self, seed_idx: int) -> bool:
        """Culls seed ``seed_idx`` on the host (its slot gets a new dormant
        seed); returns True or raises."""
        self._check_seed(seed_idx)

        def run() -> bool:
            self._client.unload_kernel(self.layer_name, seed_idx)
            self.refresh()
            return True

        return await asyncio.to_thread(run)

    def set_seed_alpha(self, seed_idx: int, alpha: float) -> None:
        """Sets seed ``seed_idx``'s blend weight on the host, clamped to [0, 1]
        like esperlite (NaN raises ``ValueError``: esperlite's clamp turns it
        into 1.0)."""
        self._check_seed(seed_idx)
        self._client.set_alpha(self.layer_name, seed_idx, _clamp_alpha(alpha))
        self.refresh()

    def get_layer_stats(self) -> Dict[str, Any]:
        """esperlite's statistics, from what the layer last heard from the host
        (no request is made; call :meth:`refresh` first for a fresh view)."""
        states = [str(s.get("state")) for s in self._seeds]
        return {
            "layer_name": self.layer_name,
            "total_forward_calls": self.total_forward_calls,
            "total_kernel_executions": self.total_kernel_executions,
            "kernel_execution_ratio": self.total_kernel_executions / max(self.total_forward_calls, 1),
            "host_forward_calls": self.host_forward_calls,
            "host_backward_calls": self.host_backward_calls,
            "state_stats": {
                "num_seeds": self.num_seeds,
                "active_seeds": sum(1 for s in self._seeds if _seed_active(s)),
                "dormant_seeds": states.count("dormant"),
                "fossilized_seeds": states.count("fossilized"),
                "seeds": [{k: s.get(k) for k in ("seed_idx", "state", "alpha", "kernel", "artifact_id")} for s in self._seeds],
            },
            "cache_stats": {"cache_size_mb": self.cache_size_mb, "where": "host"},
            "telemetry_enabled": self.telemetry_enabled,
            "host": self._client.url,
        }

    def extra_repr(self) -> str:
        return f"layer_name={self.layer_name!r}, num_seeds={self.num_seeds}, host={self._client.url!r}"


def _clamp_alpha(alpha: float) -> float:
    a = float(alpha)
    if math.isnan(a):
        raise ValueError("alpha is NaN")
    return max(0.0, min(1.0, a))


class KasminaHostConv2dLayer(KasminaHostLayer):
    """esperlite's ``KasminaConv2dLayer`` with its seeds on the host: the
    default transform is an ``nn.Conv2d`` (the original one under
    :func:`wrap`, weights and all).

    Declared on the host without shapes: a convolution takes any spatial
    size, so no one per-sample shape is the layer's; a kernel of the wrong
    shape is refused by the host at forward time with its message (400
    naming the shape), not at load.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1, padding: Union[int, Tuple[int, int], str] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1, groups: int = 1, bias: bool = True, num_seeds: int = 4,
                 cache_size_mb: int = 128, telemetry_enabled: bool = True, layer_name: str = "kasmina_conv2d_layer",
                 client: URLOrClient = None, *, default_transform: Optional[nn.Conv2d] = None,
                 sync_interval: Optional[float] = 1.0) -> None:
        conv = default_transform if default_transform is not None else nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias)
        super().__init__(in_channels, out_channels, num_seeds=num_seeds, cache_size_mb=cache_size_mb,
                         telemetry_enabled=telemetry_enabled, layer_name=layer_name, client=client,
                         default_transform=conv, input_shape=None, output_shape=None, sync_interval=sync_interval)
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"Conv2d input must be 4D (N, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Input channels {x.shape[1]} != expected {self.in_channels}")
        return super().forward(x)


class MorphableModel(nn.Module):
    """What :func:`wrap` returns, as esperlite's: the wrapped model and its
    host layers by name."""

    def __init__(self, wrapped_model: nn.Module, kasmina_layers: Dict[str, KasminaHostLayer],
                 original_model: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.wrapped_model = wrapped_model
        self.kasmina_layers = nn.ModuleDict(kasmina_layers)
        self.original_model = original_model
        self.total_forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.total_forward_calls += 1
        return self.wrapped_model(x)

    def _layer(self, layer_name: str) -> KasminaHostLayer:
        if layer_name not in self.kasmina_layers:
            raise ValueError(f"Layer '{layer_name}' not found in morphable model")
        return self.kasmina_layers[layer_name]  # type: ignore[return-value]

    async def load_kernel(self, layer_name: str, seed_idx: int, artifact_id: str, **kw: Any) -> bool:
        """``KasminaHostLayer.load_kernel`` of the named layer."""
        return await self._layer(layer_name).load_kernel(seed_idx, artifact_id, **kw)

    async def unload_kernel(self, layer_name: str, seed_idx: int) -> bool:
        """``KasminaHostLayer.unload_kernel`` of the named layer."""
        return await self._layer(layer_name).unload_kernel(seed_idx)

    def set_seed_alpha(self, layer_name: str, seed_idx: int, alpha: float) -> None:
        """``KasminaHostLayer.set_seed_alpha`` of the named layer."""
        self._layer(layer_name).set_seed_alpha(seed_idx, alpha)

    def get_layer_names(self) -> List[str]:
        """The host layers' names, in model order."""
        return list(self.kasmina_layers.keys())

    def get_layer_stats(self, layer_name: Optional[str] = None) -> Dict[str, Any]:
        """One layer's statistics, or every layer's by name."""
        if layer_name is not None:
            return self._layer(layer_name).get_layer_stats()
        return {name: layer.get_layer_stats() for name, layer in self.kasmina_layers.items()}

    def refresh(self) -> None:
        """Every layer reads its view from the host (see ``KasminaHostLayer.refresh``)."""
        for layer in self.kasmina_layers.values():
            layer.refresh()


def wrap(model: nn.Module, target_layers: Optional[Sequence[Type[nn.Module]]] = None, seeds_per_layer: int = 4,
         cache_size_mb: int = 128, telemetry_enabled: bool = True, preserve_original: bool = True, *,
         client: URLOrClient = None, sync_interval: Optional[float] = 1.0) -> MorphableModel:
    """esperlite's ``esper.wrap`` with the seeds on the host: replaces every
    child whose type is in ``target_layers`` (default ``nn.Linear`` and
    ``nn.Conv2d``) by a :class:`KasminaHostLayer` (a
    :class:`KasminaHostConv2dLayer` for a convolution) whose default
    transform is that child, weights and all, so the wrapped model
    computes exactly what the original did until a seed is active.

    Layers are named as esperlite names them: the child's name, prefixed by
    its parents' joined with ``_`` (``encoder_0``), and each is declared
    on the host under that name with ``seeds_per_layer`` seeds. A target
    type other than those two is left in place with a warning, as esperlite
    does for the types it cannot wrap. The model is deep-copied first; the
    original is kept as ``original_model`` when ``preserve_original``.
    """
    targets = tuple(target_layers) if target_layers is not None else (nn.Linear, nn.Conv2d)
    host = client_for(client)
    wrapped = copy.deepcopy(model)
    original = copy.deepcopy(model) if preserve_original else None
    layers: Dict[str, KasminaHostLayer] = {}

    def replace(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            child_name = f"{prefix}_{name}" if prefix else name
            if type(child) in targets:
                layer = _host_layer_for(child, child_name, seeds_per_layer, cache_size_mb, telemetry_enabled,
                                        host, sync_interval)
                if layer is not None:
                    setattr(module, name, layer)
                    layers[child_name] = layer
                    continue
                logger.warning("Skipping %s at '%s': no host layer for this type", type(child).__name__, child_name)
            replace(child, child_name)

    replace(wrapped, "")
    logger.info("wrapped %d layers on %s", len(layers), host.url)
    return MorphableModel(wrapped, layers, original)


def _host_layer_for(child: nn.Module, name: str, seeds: int, cache_size_mb: int, telemetry_enabled: bool,
                    client: Client, sync_interval: Optional[float]) -> Optional[KasminaHostLayer]:
    common = dict(num_seeds=seeds, cache_size_mb=cache_size_mb, telemetry_enabled=telemetry_enabled,
                  layer_name=name, client=client)
    if isinstance(child, nn.Conv2d):
        return KasminaHostConv2dLayer(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                      padding=child.padding, dilation=child.dilation, groups=child.groups,
                                      bias=child.bias is not None, default_transform=child,
                                      sync_interval=sync_interval, **common)  # type: ignore[arg-type]
    if isinstance(child, nn.Linear):
        return KasminaHostLayer(child.in_features, child.out_features, default_transform=child,
                                input_shape=[child.in_features], output_shape=[child.out_features],
                                sync_interval=sync_interval, **common)  # type: ignore[arg-type]
    return None

