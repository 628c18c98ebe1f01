"""System shared memory: tensors that never cross the socket.

Triton's system shared memory extension, as the host serves it: the client
creates a POSIX shared memory object (``/dev/shm/kasmina-<pid>-<random>``,
mode 0600), registers it with the host as a region of the same name
(``POST /v2/systemsharedmemory/region/{name}/register``), writes a
request's input tensors into it and names them by region, offset and byte
size instead of sending their bytes; a kernel's output comes back the same
way. The host reads and writes the region's own pages: a megabyte of
activations is copied once into the region, not through a socket twice.

It works when the host can open the client's object: the same node, the
same ``/dev/shm`` (a sidecar container must share it, e.g. an ``emptyDir``
with ``medium: Memory`` mounted at ``/dev/shm`` in both containers), and
the same user (or a host running as root). :class:`~kasmina_host.Client`
tries it on its first tensor call when the host is on this node, and goes
on over the socket, for good, if the host cannot use it.

A region serves one request at a time; the client keeps a few and grows
one that is too small. Values are always copied out of a region before a
call returns, so nothing a caller holds changes under it.
"""

from __future__ import annotations

import os
import secrets
import threading
from multiprocessing import shared_memory
from typing import Callable, List, Optional

import numpy as np

#: Offsets of tensors within a region are multiples of this (the host uses
#: 4-aligned FP32 where it lies; 64 keeps every tensor on its own cache lines).
ALIGN = 64

#: The smallest region the client creates; larger ones are powers of two.
MIN_REGION_BYTES = 1 << 20


def aligned(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGN`."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Region:
    """A POSIX shared memory object of this process, registered with the
    host as the region :attr:`name` (the object's name, without the
    leading slash)."""

    def __init__(self, size: int) -> None:
        self.name = f"kasmina-{os.getpid()}-{secrets.token_hex(6)}"
        self.size = size
        self._shm: Optional[shared_memory.SharedMemory] = shared_memory.SharedMemory(
            name=self.name, create=True, size=size)

    @property
    def key(self) -> str:
        """The object's name as ``shm_open`` takes it (the register call's ``key``)."""
        return "/" + self.name

    def write(self, offset: int, arr: np.ndarray) -> None:
        """Copies the C-contiguous array ``arr`` into the region at ``offset``."""
        if self._shm is None:
            raise ValueError(f"region {self.name} is closed")
        dst = np.ndarray(arr.shape, dtype=arr.dtype, buffer=self._shm.buf, offset=offset)
        np.copyto(dst, arr, casting="no")
        del dst  # no view of the buffer may outlive a call: close() needs none

    def read(self, offset: int, shape: List[int], dtype: np.dtype) -> np.ndarray:
        """A copy of the array of ``shape`` and ``dtype`` at ``offset``."""
        if self._shm is None:
            raise ValueError(f"region {self.name} is closed")
        src = np.ndarray(shape, dtype=dtype, buffer=self._shm.buf, offset=offset)
        out = src.copy()
        del src
        return out

    def close(self) -> None:
        """Unmaps and removes the object (the host keeps its own mapping
        until it unregisters the region)."""
        shm, self._shm = self._shm, None
        if shm is not None:
            shm.close()
            try:
                shm.unlink()
            except FileNotFoundError:
                pass


class RegionPool:
    """Regions registered with one host, each lent to one request at a time.

    ``register(region)`` and ``unregister(name)`` talk to the host; a
    region that cannot be registered is closed and the error raised.
    """

    def __init__(self, register: Callable[[Region], None], unregister: Callable[[str], None],
                 max_idle: int = 4) -> None:
        self._register = register
        self._unregister = unregister
        self._max_idle = max_idle
        self._idle: List[Region] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()  # regions belong to the process that made them
        self.created = 0  #: regions created so far

    def take(self, size: int) -> Region:
        """An idle region of at least ``size`` bytes, or a new one."""
        with self._lock:
            for i, r in enumerate(self._idle):
                if r.size >= size:
                    return self._idle.pop(i)
            small = self._idle.pop() if self._idle else None
        if small is not None:  # too small for this request: make room for a larger one
            self._drop(small)
        region = Region(max(MIN_REGION_BYTES, 1 << (max(size, 1) - 1).bit_length()))
        try:
            self._register(region)
        except BaseException:
            region.close()
            raise
        with self._lock:
            self.created += 1
        return region

    def give_back(self, region: Region) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(region)
                return
        self._drop(region)

    def _drop(self, region: Region) -> None:
        try:
            self._unregister(region.name)
        except Exception:
            pass  # the host is gone or refuses: the object is removed all the same
        finally:
            region.close()

    def close(self) -> None:
        """Unregisters and removes every idle region. In a forked child it
        does nothing: the regions are the parent's."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            idle, self._idle = self._idle, []
        for r in idle:
            self._drop(r)
