"""Pickles from a user's folder, read without running what they hold.

Unpickling calls whatever functions the file names (``os.system`` among them), so a planted
file would run code the moment seltrain reads it. The CIFAR-10/100 "python version" batches
are pickles, and they hold only plain data: a dict of bytes, lists of ints and one numpy
array. ``load_data_pickle`` reads them with an unpickler that admits exactly what such files
name, and refuses any other name before it is called: nothing in a refused file runs.

What the admitted names do: numpy's array reconstruction (``_reconstruct``, ``_frombuffer``,
``ndarray`` and ``dtype``) builds an array from bytes; ``_codecs.encode`` turns the text
that Python 3 writes for bytes in protocol 2 back into bytes; the builtins listed are plain
containers and numbers. Each of them only builds data.

The other files seltrain reads from a run folder need no unpickler of their own:
checkpoints are read with ``torch.load(weights_only=True)``, torch's own restricted
unpickler (tensors, containers, numbers); ``.npy`` files with numpy's default
``allow_pickle=False``. Two exceptions are third-party state that seltrain hands to its
owner: DeepSpeed's ZeRO shards (``checkpoints/deepspeed/``, read on ``--resume`` of a
DeepSpeed run) and Ray Tune's experiment state (``seltrain tune --resume``) are full
pickles, read by DeepSpeed and Ray. Resume only runs and experiments you trust.
"""
from __future__ import annotations

import _compat_pickle
import pickle

from seltrain.errors import DataError

# (module, name) pairs that a CIFAR batch names, under numpy 1 (numpy.core) and numpy 2
# (numpy._core), in every pickle protocol.
ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
    *(("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytes",
                                "bytearray", "str", "int", "float", "complex", "bool")),
})


class RefusedPickle(pickle.UnpicklingError):
    """The file names something outside ``ALLOWED``: it was not called."""


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # Python 2 pickles name Python 2 modules (__builtin__, copy_reg): judge the Python 3
        # names they are read as, as pickle.Unpickler.find_class maps them.
        # (Those names exist in no Python 3, so mapping them whatever the protocol changes
        # nothing else.)
        py3_module, py3_name = module, name
        if (module, name) in _compat_pickle.NAME_MAPPING:
            py3_module, py3_name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            py3_module = _compat_pickle.IMPORT_MAPPING[module]
        if (py3_module, py3_name) not in ALLOWED:
            raise RefusedPickle(f"{py3_module}.{py3_name}")
        return super().find_class(module, name)


def load_data_pickle(path: str, what: str, fix: str):
    """The object in the pickle at ``path`` (Python 2 strings read as bytes), or one
    DataError: "``path`` is not a plain-data ``what``: it names ``module.name``, which seltrain
    does not call" when the file names anything beyond plain data, else the read error."""
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(f, encoding="bytes").load()
    except RefusedPickle as e:
        raise DataError(f"{path} is not a plain-data {what}: it names {e}, which seltrain does "
                        f"not call (a pickle can run code; nothing from it was run); {fix}") \
            from None
    except Exception as e:  # noqa: BLE001 - truncated, garbage, not a pickle: one fix
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}); the file is corrupt: "
                        f"{fix}") from None
