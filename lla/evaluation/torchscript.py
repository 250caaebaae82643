"""Read the tensors and attributes of a TorchScript archive without torch.

A TorchScript archive (`torch.jit.save`) is a zip file under one top folder `<top>/`:

    <top>/data.pkl         the module tree, pickled (protocol 2): each module an object of a
                           class `__torch__.<qualified name>` whose state is a dict of its
                           attributes (sub-modules, tensors, ints, lists, bools)
    <top>/data/<key>       the raw bytes of each tensor storage, little-endian
    <top>/code/__torch__/  the TorchScript source of every module's forward
    <top>/byteorder        optional: "little" (big-endian archives are refused)

A tensor is pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
whose storage is a persistent id `("storage", torch.FloatStorage, key, device, numel)`.
`ArchiveUnpickler` rebuilds those as numpy arrays and the modules as `ScriptObject`s, and
refuses every other global, so reading an archive never runs code from it.

    module = torchscript.load("default_1.pt")       # ScriptObject tree
    module.net.layers.conv.weight                    # np.ndarray float32 [32, 3, 3, 3]
    torchscript.named_tensors(module)                # {"net.layers.conv.weight": ...}
    torchscript.source(path, "inceptionv3.py")       # the forward code, to read
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np

# torch storage class -> numpy dtype (little-endian).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
}


class ScriptObject:
    """One pickled TorchScript module (or other scripted object): `qualified_name` (e.g.
    `__torch__.inceptionv3.Conv2dLayer`) and its attributes, read as Python attributes."""

    qualified_name = "__torch__"

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<{self.qualified_name} {sorted(self.__dict__)}>"


class StorageType:
    """A `torch.<Name>Storage` class named in a persistent id: its numpy `dtype`."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGE_DTYPES[name]


def build_intlist(values: list[int]) -> list[int]:
    """`torch.jit._pickle.build_intlist`: a TorchScript List[int] attribute, as a list."""
    return list(values)


def rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                   stride: tuple[int, ...], requires_grad: bool = False,
                   backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2`: the view of the flat `storage` [numel] at element
    `offset` with `size` and element `stride`, copied to a contiguous array of shape `size`.

    Raises:
      ValueError: the view reaches outside the storage.
    """
    del requires_grad, backward_hooks, metadata
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride):
        raise ValueError(f"tensor size {size} and stride {stride} differ in rank")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True) if n > 0)
    if offset < 0 or min(stride, default=0) < 0 or (0 not in size and last >= storage.size):
        raise ValueError(f"tensor (offset {offset}, size {size}, stride {stride}) reaches "
                         f"outside its storage of {storage.size} elements")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], size, [s * storage.itemsize for s in stride], writeable=False)
    return np.ascontiguousarray(view)


class ArchiveUnpickler(pickle.Unpickler):
    """Unpickles `<top>/data.pkl` of an open archive: tensors as numpy arrays (storages read
    from `<top>/data/<key>`), modules as `ScriptObject`s.

    The only globals allowed are `__torch__.*` classes (become `ScriptObject` subclasses),
    `torch.<X>Storage` (in persistent ids), `torch._utils._rebuild_tensor_v2`,
    `torch.jit._pickle.build_intlist` and `collections.OrderedDict` (empty backward hooks);
    any other raises `pickle.UnpicklingError` naming it.
    """

    def __init__(self, archive: zipfile.ZipFile, top: str):
        super().__init__(archive.open(f"{top}/data.pkl"))
        self.archive, self.top = archive, top
        self.storages: dict[str, np.ndarray] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global `module.name` (class docstring), else UnpicklingError."""
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (ScriptObject,),
                                               {"qualified_name": qualified})
            return self.classes[qualified]
        allowed = {("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
                   ("torch.jit._pickle", "build_intlist"): build_intlist,
                   ("collections", "OrderedDict"): OrderedDict}
        if (module, name) in allowed:
            return allowed[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing the global {module}.{name} in the archive's "
                                     f"data.pkl: only torch tensors and __torch__ modules "
                                     "are read")

    def persistent_load(self, pid: Any) -> np.ndarray:
        """A storage `("storage", StorageType, key, device, numel)` -> flat array [numel]."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _, numel = pid
        if key not in self.storages:
            dtype = storage_type.dtype
            data = self.archive.read(f"{self.top}/data/{key}")
            if len(data) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key}: {len(data)} bytes, expected {numel} x {dtype.itemsize}")
            self.storages[key] = np.frombuffer(data, dtype)
        return self.storages[key]


def top_folder(archive: zipfile.ZipFile) -> str:
    """The archive's top folder: the `<top>` of its one `<top>/data.pkl`.

    Raises:
      ValueError: not a TorchScript archive (no or several data.pkl at depth one).
    """
    tops = [name[:-len("/data.pkl")] for name in archive.namelist()
            if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(tops) != 1:
        raise ValueError(f"{archive.filename}: not a TorchScript archive "
                         f"(expected one <top>/data.pkl, found {len(tops)})")
    return tops[0]


def load(path: str) -> ScriptObject:
    """The module tree of the TorchScript archive at `path`, tensors as numpy arrays.

    Raises:
      ValueError: not a TorchScript archive, or one written big-endian.
    """
    with zipfile.ZipFile(path) as archive:
        top = top_folder(archive)
        if f"{top}/byteorder" in archive.namelist():
            byteorder = archive.read(f"{top}/byteorder").decode().strip()
            if byteorder != "little":
                raise ValueError(f"{path}: {byteorder}-endian storages are not supported")
        return ArchiveUnpickler(archive, top).load()


def source(path: str, name: str) -> str:
    """The TorchScript code file `<top>/code/__torch__/<name>` (e.g. "inceptionv3.py")."""
    with zipfile.ZipFile(path) as archive:
        return archive.read(f"{top_folder(archive)}/code/__torch__/{name}").decode()


def walk(obj: ScriptObject, prefix: str = "") -> Iterator[tuple[str, ScriptObject]]:
    """(dotted name, module) for `obj` and every module below it, depth first in attribute
    order (the root's name is `prefix`)."""
    yield prefix, obj
    for key, value in vars(obj).items():
        if isinstance(value, ScriptObject):
            yield from walk(value, f"{prefix}.{key}" if prefix else key)


def named_tensors(obj: ScriptObject) -> dict[str, np.ndarray]:
    """Every tensor attribute below `obj` by dotted name ("layers.conv.weight")."""
    return {f"{name}.{key}" if name else key: value
            for name, module in walk(obj) for key, value in vars(module).items()
            if isinstance(value, np.ndarray)}
