"""Megatron-core 0.16 on machines without CUDA (tests, CI, laptops). Never applied on a GPU run.

Megatron-core hard-codes CUDA in code paths the harness uses. Measured on 0.16.1 with torch 2.13
CPU (docs/megatron-on-cpu.md), each fails with "Torch not compiled with CUDA enabled" on CPU:

- buffers allocated on ``torch.cuda.current_device()``: tensor_parallel/mappings.py and layers.py
  (gathers, reduce-scatters), utils.py ``GlobalMemoryBuffer``, pipeline_parallel/p2p_communication.py
  (receive buffers);
- literal ``device="cuda"``: pipeline_parallel/schedules.py (``total_num_tokens``),
  optimizer/optimizer.py, optimizer/clip_grads.py, optimizer/grad_scaler.py,
  distributed/param_and_grad_buffer.py;
- ``torch.cuda.synchronize()``: p2p_communication.py, dist_checkpointing/strategies/filesystem_async.py;
- the RNG tracker (tensor_parallel/random.py) reads and writes the CUDA generator; on a CPU build
  ``_set_cuda_rng_state`` would silently do nothing;
- type-name checks ``param.type() == 'torch.cuda.FloatTensor'`` in optimizer/optimizer.py,
  optimizer/distrib_optimizer.py and optimizer/clip_grads.py, and ``tensor.cuda()`` calls.

How: every loaded ``megatron.core`` module sees a stand-in for its global ``torch`` whose
``torch.cuda`` answers for the CPU and whose tensor factories map a CUDA device to the CPU. Code
outside Megatron keeps the real ``torch``. ``Tensor.type()`` and ``Tensor.cuda()`` are methods,
so they are wrapped for callers inside ``megatron.core`` only. A global ``TorchFunctionMode``
does not work: torch pops it inside autograd's backward, where Megatron allocates buffers too.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types

import torch

# Megatron packages whose modules must be loaded before patching: the patch rewrites module globals.
_MEGATRON_MODULES = (
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.tensor_parallel",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.mlp",
    "megatron.core.transformer.utils",
    "megatron.core.pipeline_parallel",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.distributed",
    "megatron.core.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer_param_scheduler",
    "megatron.core.dist_checkpointing",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.exchange_utils",
)
_FACTORIES = ("empty", "zeros", "ones", "full", "tensor", "as_tensor", "arange", "rand", "randn",
              "randint", "empty_strided", "eye", "linspace")
_CUDA_TYPE_NAMES = {torch.float32: "torch.cuda.FloatTensor", torch.float16: "torch.cuda.HalfTensor",
                    torch.bfloat16: "torch.cuda.BFloat16Tensor"}
_applied = False


def _to_cpu(device):
    """An int or CUDA device as Megatron passes it becomes the CPU; anything else is kept."""
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cpu")
    device = torch.device(device)
    return torch.device("cpu") if device.type == "cuda" else device


def _factory(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        return fn(*args, **kwargs)
    return wrapped


class _NullStream:
    """What Megatron needs of a CUDA stream on a CPU: ordering is already program order."""

    def wait_stream(self, other) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _NullEvent(_NullStream):
    def record(self, stream=None) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass


class _CudaOnCpu(types.SimpleNamespace):
    """``torch.cuda`` as Megatron sees it on a CPU machine: the CPU is the device."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    current_device = staticmethod(lambda: torch.device("cpu"))
    synchronize = staticmethod(lambda device=None: None)
    empty_cache = staticmethod(lambda: None)
    is_available = staticmethod(lambda: False)
    get_rng_state = staticmethod(lambda device="cuda": torch.get_rng_state())
    set_rng_state = staticmethod(lambda state, device="cuda": torch.set_rng_state(state))
    manual_seed = staticmethod(lambda seed: torch.manual_seed(seed))
    current_stream = staticmethod(lambda device=None: _NullStream())
    default_stream = staticmethod(lambda device=None: _NullStream())
    stream = staticmethod(lambda s=None: _NullStream())
    Stream = staticmethod(lambda *a, **k: _NullStream())
    Event = staticmethod(lambda *a, **k: _NullEvent())


class _TorchOnCpu(types.ModuleType):
    """The ``torch`` module as seen from inside Megatron: CUDA answers for the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _CudaOnCpu()
        for name in _FACTORIES:
            setattr(self, name, _factory(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


def _called_from_megatron(depth: int = 2) -> bool:
    return sys._getframe(depth).f_globals.get("__name__", "").startswith("megatron.core")


def _patch_tensor_methods() -> None:
    original_type, original_cuda = torch.Tensor.type, torch.Tensor.cuda

    @functools.wraps(original_type)
    def type_(self, *args, **kwargs):
        if not args and not kwargs and _called_from_megatron():
            return _CUDA_TYPE_NAMES.get(self.dtype, original_type(self))
        return original_type(self, *args, **kwargs)

    @functools.wraps(original_cuda)
    def cuda(self, *args, **kwargs):
        if _called_from_megatron():
            return self
        return original_cuda(self, *args, **kwargs)

    torch.Tensor.type, torch.Tensor.cuda = type_, cuda


def _patch_rng_tracker() -> None:
    """The tracker forks 'the device generator'; on a CPU that is the CPU generator."""
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)


def apply() -> bool:
    """Redirect Megatron-core's CUDA calls to the CPU when CUDA is absent; return whether applied."""
    global _applied
    if torch.cuda.is_available():
        return False
    if _applied:
        return True
    for name in _MEGATRON_MODULES:
        importlib.import_module(name)
    stand_in = _TorchOnCpu()
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and getattr(module, "torch", None) is torch:
            module.torch = stand_in
    _patch_rng_tracker()
    _patch_tensor_methods()
    _applied = True
    return True


def is_applied() -> bool:
    """Whether this process runs Megatron-core through the CPU compatibility layer."""
    return _applied
