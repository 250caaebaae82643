"""The TorchScript reader against archives written here by hand (zipfile + pickle, no torch):
tensor views with offsets and strides, shared storages, module attributes, refused globals."""

from __future__ import annotations

import copyreg
import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from lla.evaluation import torchscript


class Global:
    """A stand-in pickled as the global `module.name` (which need not be importable here)."""

    def __init__(self, module: str, name: str):
        self.torch_global = (module, name)

    def __call__(self, *args):  # pickle wants REDUCE's function callable; never called
        raise NotImplementedError


def scripted_class(module: str, name: str) -> type:
    """A class pickled as `module.name` whose instances pickle as NEWOBJ + BUILD(dict), the
    way TorchScript writes modules."""
    cls = type(name, (), {"__reduce_ex__": lambda self, protocol: (
        copyreg.__newobj__, (type(self),), dict(self.attributes))})
    cls.torch_global = (module, name)
    return cls


class Storage:
    """A storage pickled as the persistent id ("storage", torch.<kind>, key, "cpu", numel)
    (numel: that of `values` unless given)."""

    def __init__(self, key: str, kind: str, values: np.ndarray, numel: int | None = None):
        self.key, self.kind, self.values = key, kind, values
        self.numel = values.size if numel is None else numel


class Tensor:
    """A tensor pickled as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride)

    def __reduce_ex__(self, protocol):
        return (Global("torch._utils", "_rebuild_tensor_v2"),
                (*self.args, False, OrderedDict()))


class TorchPickler(pickle._Pickler):
    """Writes stand-ins' globals without importing them and storages as persistent ids."""

    def save_global(self, obj, name=None):
        if hasattr(obj, "torch_global"):
            module, name = obj.torch_global
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            return self.save_global(obj)
        return super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", Global("torch", obj.kind), obj.key, "cpu", obj.numel)
        return None


class IntList:
    """A TorchScript List[int] attribute: torch.jit._pickle.build_intlist(values)."""

    def __init__(self, values):
        self.values = values

    def __reduce_ex__(self, protocol):
        return Global("torch.jit._pickle", "build_intlist"), (self.values,)


def write_archive(path, root, storages, top="archive"):
    buffer = io.BytesIO()
    TorchPickler(buffer, protocol=2).dump(root)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/data.pkl", buffer.getvalue())
        archive.writestr(f"{top}/version", "3\n")
        archive.writestr(f"{top}/code/__torch__/m.py", "class Root(Module): ...\n")
        for storage in storages:
            archive.writestr(f"{top}/data/{storage.key}",
                             storage.values.astype(storage.values.dtype.newbyteorder("<"))
                             .tobytes())
    return path


def module(cls, **attributes):
    obj = cls()
    obj.attributes = attributes
    return obj


Root = scripted_class("__torch__.m", "Root")
Layer = scripted_class("__torch__.m.___torch_mangle_3", "Layer")


@pytest.fixture
def archive_path(tmp_path):
    floats = Storage("0", "FloatStorage", np.arange(24, dtype=np.float32))
    longs = Storage("1", "LongStorage", np.array([7, -8, 9, 2**40], np.int64))
    layer = module(Layer, training=False, stride=2,
                   padding=IntList([0, 3]),
                   weight=Tensor(floats, 2, (2, 3), (1, 2)),   # transposed view, offset 2
                   bias=Tensor(floats, 5, (3,), (1,)),         # same storage, offset 5
                   table=Tensor(longs, 0, (2, 2), (2, 1)))
    root = module(Root, training=False, _is_full_backward_hook=None, layer=layer)
    return write_archive(tmp_path / "model.pt", root, [floats, longs])


def test_tensors_are_views_of_their_storage_with_offset_and_stride(archive_path):
    root = torchscript.load(str(archive_path))
    storage = np.arange(24, dtype=np.float32)
    weight = root.layer.weight
    np.testing.assert_array_equal(weight, [[storage[2 + i + 2 * j] for j in range(3)]
                                           for i in range(2)])
    assert weight.dtype == np.float32 and weight.flags.c_contiguous
    np.testing.assert_array_equal(root.layer.bias, [5, 6, 7])
    np.testing.assert_array_equal(root.layer.table, [[7, -8], [9, 2**40]])
    assert root.layer.table.dtype == np.int64


def test_modules_keep_their_qualified_names_and_attributes(archive_path):
    root = torchscript.load(str(archive_path))
    assert root.qualified_name == "__torch__.m.Root"
    assert root.layer.qualified_name == "__torch__.m.___torch_mangle_3.Layer"
    assert (root.layer.stride, root.layer.padding, root.training) == (2, [0, 3], False)
    assert [name for name, _ in torchscript.walk(root)] == ["", "layer"]
    assert sorted(torchscript.named_tensors(root)) == ["layer.bias", "layer.table",
                                                       "layer.weight"]
    assert torchscript.source(str(archive_path), "m.py").startswith("class Root")


@pytest.mark.parametrize("global_name", [("os", "system"), ("builtins", "eval"),
                                         ("torch", "load"), ("torch._utils", "_rebuild_parameter")])
def test_a_foreign_global_is_refused_by_name(tmp_path, global_name):
    root = module(Root, training=False, hook=Global(*global_name))
    path = write_archive(tmp_path / "evil.pt", root, [])
    with pytest.raises(pickle.UnpicklingError,
                       match=rf"refusing the global {'.'.join(global_name)}\b"):
        torchscript.load(str(path))


def test_views_outside_the_storage_and_short_storages_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reaches outside its storage"):
        torchscript.rebuild_tensor(np.arange(6, dtype=np.float32), 1, (2, 3), (3, 1))
    short = Storage("0", "FloatStorage", np.arange(2, dtype=np.float32), numel=4)
    root = module(Root, weight=Tensor(short, 0, (4,), (1,)))
    path = write_archive(tmp_path / "short.pt", root, [short])
    with pytest.raises(pickle.UnpicklingError, match="8 bytes, expected 4 x 4"):
        torchscript.load(str(path))


def test_a_zip_without_one_top_level_data_pkl_is_not_an_archive(tmp_path):
    path = tmp_path / "plain.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a/b/data.pkl", b"")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        torchscript.load(str(path))
