"""Cache keys: what a preprocessed subject depends on, hashed.

An entry of the cache holds a subject after loading and after the transform's cached prefix
(:func:`shmqueue.cache.store.cached_prefix`). It stays valid while nothing it was computed from
changes, so its key hashes all of that:

- each image's kind and source: a file's resolved path, size and modification time (or its
  content, with ``content_hash``: for files whose times are not kept, e.g. copied without
  ``-p``), an in-memory image's voxels and affine, and the ``reader=`` it is read with;
- the subject's other entries (metadata such as an id), by value;
- each cached step by value: its class and the values of its attributes, recursively; a function
  (a :class:`~shmqueue.Lambda`'s, a ``reader=``) by its compiled code, constants and closure, and
  a user's transform class by the code of its methods, so that editing the code rebuilds;
- the versions of shmqueue, torch and numpy, whose arithmetic the voxels come from.

A value the key cannot see into (an object without attributes whose ``repr`` carries only its
address) is refused with :class:`~shmqueue.errors.CacheKeyError` naming where it is: hashing its
address would miss every time, and ignoring it could serve a stale entry.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import sys
import sysconfig
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import CacheKeyError
from ..image import Image
from ..subject import Subject
from ..transforms import SubjectTransform, step_name
from ..version import __version__

FORMAT_VERSION = 1
"""The layout of an entry (:mod:`shmqueue.cache.store`); part of every key."""

_CHUNK = 1 << 20
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def file_identity(path: Path, content_hash: bool) -> tuple[object, ...]:
    """What identifies the file (or DICOM directory) ``path``'s content: its resolved path with
    each file's size and modification time in nanoseconds, or its bytes' hash with
    ``content_hash``."""
    resolved = path.resolve()
    files = sorted(resolved.iterdir()) if resolved.is_dir() else [resolved]
    identity: list[object] = [str(resolved)]
    for file in files:
        if content_hash:
            identity.append(_content_hash(file))
        else:
            status = file.stat()
            identity.append((file.name, status.st_size, status.st_mtime_ns))
    return tuple(identity)


def _content_hash(file: Path) -> str:
    hasher = hashlib.blake2b(digest_size=20)
    with open(file, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def subject_key(
    subject: Subject, steps: Sequence[SubjectTransform], content_hash: bool = False
) -> str:
    """The hex key of ``subject`` preprocessed by ``steps`` (see the module's docstring).

    Raises:
        CacheKeyError: a step or the subject holds a value the key cannot see into.
    """
    hasher = _Hasher(content_hash)
    hasher.feed(("shmqueue cache", FORMAT_VERSION, __version__, torch.__version__, np.__version__))
    for name, value in subject.items():
        hasher.feed(name)
        hasher.feed_at(value, f"the subject's '{name}'")
    for number, step in enumerate(steps, start=1):
        hasher.feed_at(step, f"cached step {number} ({step_name(step)})")
    return hasher.hexdigest()


class _Hasher:
    """Feeds values into a BLAKE2b hash, each tagged with its type so that none collide."""

    def __init__(self, content_hash: bool) -> None:
        self._hash = hashlib.blake2b(digest_size=20)
        self._content_hash = content_hash
        self._where = ""
        self._active: set[int] = set()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def feed_at(self, value: object, where: str) -> None:
        """Feed ``value``, naming it ``where`` if it cannot be hashed."""
        self._where = where
        self.feed(value)

    def _tag(self, tag: str, text: object = "") -> None:
        self._hash.update(f"\x00{tag}:{text}\x01".encode())

    def feed(self, value: object) -> None:
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            self._tag(type(value).__name__, repr(value))
        elif isinstance(value, (torch.dtype, np.dtype, torch.device)):
            self._tag("dtype", str(value))
        elif isinstance(value, enum.Enum):
            self._tag("enum", f"{_qualified(type(value))}.{value.name}")
        elif isinstance(value, type):
            self._feed_class(value)
        elif isinstance(value, Path):
            self._tag("path", str(value))
            if value.exists():
                self.feed(file_identity(value, self._content_hash))
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            self._feed_array(value)
        elif id(value) in self._active:
            self._tag("cycle")
        else:
            self._active.add(id(value))
            try:
                self._feed_composite(value)
            finally:
                self._active.discard(id(value))

    def _feed_composite(self, value: object) -> None:
        if isinstance(value, Image):
            self._feed_image(value)
        elif isinstance(value, Mapping):
            self._tag(_qualified(type(value)), len(value))
            for key in sorted(value, key=repr):
                self.feed(key)
                self.feed(value[key])
        elif isinstance(value, (set, frozenset)):
            self._feed_items("set", sorted(value, key=repr))
        elif isinstance(value, (list, tuple, range)):
            self._feed_items(_qualified(type(value)), value)
        elif isinstance(value, functools.partial):
            self._tag("partial")
            self.feed((value.func, value.args, value.keywords))
        elif isinstance(value, (types.FunctionType, types.MethodType)):
            self._feed_function(value)
        elif callable(value) and not hasattr(value, "__dict__"):  # a builtin, a ufunc
            self._tag("builtin", f"{getattr(value, '__module__', '')}.{_name(value)}")
        elif hasattr(value, "__dict__") or hasattr(type(value), "__slots__"):
            self._feed_class(type(value))
            self.feed(_attributes(value))
        else:
            self._feed_repr(value)

    def _feed_items(self, tag: str, items: Iterable[object]) -> None:
        values = list(items)
        self._tag(tag, len(values))
        for item in values:
            self.feed(item)

    def _feed_array(self, value: np.ndarray | torch.Tensor) -> None:
        array = value.numpy(force=True) if isinstance(value, torch.Tensor) else value
        self._tag("array", f"{array.dtype.str}{array.shape}")
        self._hash.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)

    def _feed_image(self, image: Image) -> None:
        self._feed_class(type(image))
        self.feed(image.__dict__.get("_reader"))
        if image.path is None:
            self.feed(image.affine)
            self.feed(image.data)
        else:
            self._tag("image file")
            self.feed(file_identity(image.path, self._content_hash))

    def _feed_function(self, function: types.FunctionType | types.MethodType) -> None:
        if isinstance(function, types.MethodType):
            self._tag("method")
            self.feed(function.__self__)
            function = function.__func__  # type: ignore[assignment]
        assert isinstance(function, types.FunctionType)
        self._tag("function", f"{function.__module__}.{function.__qualname__}")
        self._feed_code(function.__code__)
        self.feed(function.__defaults__)
        self.feed(function.__kwdefaults__)
        cells = function.__closure__ or ()
        self.feed(tuple(_cell_contents(cell) for cell in cells))

    def _feed_code(self, code: types.CodeType) -> None:
        self._tag("code", code.co_name)
        self._hash.update(code.co_code)
        self.feed(code.co_names)
        for constant in code.co_consts:
            if isinstance(constant, types.CodeType):
                self._feed_code(constant)
            else:
                self.feed(constant)

    def _feed_class(self, cls: type) -> None:
        """A class by name, and by the code of its methods when it is not shmqueue's own (a
        user's transform, edited between runs) nor a library's."""
        self._tag("class", _qualified(cls))
        for base in cls.__mro__:
            if not _is_users(base):
                continue
            for name, member in sorted(vars(base).items()):
                function = getattr(member, "__func__", member)
                if isinstance(function, types.FunctionType):
                    self._tag("member", name)
                    self._feed_code(function.__code__)

    def _feed_repr(self, value: object) -> None:
        text = repr(value)
        if _ADDRESS.search(text):
            raise CacheKeyError(
                f"The cache cannot key {self._where}: it holds {text}, a"
                f" {type(value).__name__} with no attributes to hash and a repr that shows only"
                " its address, which differs in every process. Give it a __repr__ that shows"
                " its parameters, pass plain values instead, or move the step after the first"
                " random one (it is then not cached)."
            )
        self._tag(_qualified(type(value)), text)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _name(value: object) -> str:
    return str(getattr(value, "__qualname__", getattr(value, "__name__", type(value).__name__)))


def _is_users(cls: type) -> bool:
    """Whether ``cls`` is the user's code: defined outside shmqueue, the standard library and
    the installed packages (whose code changes only with their versions)."""
    if cls.__module__.split(".")[0] in {"builtins", "shmqueue"}:
        return False
    source = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if source is None:
        return cls.__module__ == "__main__"
    return not any(str(Path(source).resolve()).startswith(root) for root in _library_roots())


@functools.cache
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple(str(Path(paths[key]).resolve()) for key in keys)


def _attributes(value: object) -> dict[str, object]:
    attributes = dict(getattr(value, "__dict__", {}))
    for name in getattr(type(value), "__slots__", ()):
        if hasattr(value, name):
            attributes[name] = getattr(value, name)
    return attributes


def _cell_contents(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell: a name the function assigns later
        return None
