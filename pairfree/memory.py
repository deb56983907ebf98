"""Exact, machine-independent activation-memory accounting: the bytes autograd keeps for backward.

:class:`SavedTensorsMeter` hooks ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd saves is
counted once per storage while something still holds it; parameters (and other tensors named in ``exclude``)
are not activations and are skipped. ``peak`` is the most bytes alive at once — over the forward *and* the
backward (recomputation during backward saves tensors too), so it measures what checkpointing buys.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _Held:
    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor, key, meter):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        if self.key is not None:
            self.meter._release(self.key)


class SavedTensorsMeter:
    """``with SavedTensorsMeter(exclude=model.parameters()) as m: loss = f(); loss.backward()`` → ``m.peak``."""

    def __init__(self, exclude=()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude if t.numel()}
        self._refs: dict[tuple[int, int], int] = {}
        self.live = 0
        self.peak = 0

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._exclude or storage.nbytes() == 0 or t.device.type == "meta":
            return _Held(t, None, self)
        key = (ptr, storage.nbytes())
        if key not in self._refs:
            self._refs[key] = 0
            self.live += key[1]
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        return _Held(t, key, self)

    def _release(self, key):
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= key[1]

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda held: held.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


class LiveBytesMeter:
    """Peak bytes of tensor storage created inside the region and still alive — activations, recomputed
    activations, temporaries, gradients — exact and machine-independent (CPU or GPU). Storages that existed
    before (parameters, inputs) are not counted. Works through ``torch.utils.checkpoint`` (whose own
    saved-tensor hooks hide recomputation from :class:`SavedTensorsMeter`) because it watches every op.

    ``with LiveBytesMeter() as m: loss = f(); loss.backward()`` → ``m.peak``.
    """

    def __init__(self):
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.is_sparse:
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._seen or storage.nbytes() == 0:
            return
        self._seen.add(key)
        n = storage.nbytes()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, n)

    def _free(self, key: int, n: int) -> None:
        self._seen.discard(key)
        self.live -= n

    def __enter__(self):
        meter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                leaves = torch.utils._pytree.tree_leaves((args, kwargs))
                seen = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor) and t.numel()}
                for t in torch.utils._pytree.tree_leaves(out):  # views and in-place results allocate nothing
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                        meter._track(t)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False
