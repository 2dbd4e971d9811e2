"""Images: a 3D volume with channels, read lazily from a file or given in memory.

Files are read by nibabel (NIfTI and what nibabel reads), by SimpleITK (NRRD, MHA/MHD, DICOM
files and series directories: :mod:`shmqueue.readers`, the ``sitk`` extra), or by a ``reader=``
the user passes. An :class:`Image` knows its shape, dtype, affine and spacing from the file's
header alone; voxels are read only by :meth:`Image.load` (or the first access to
:attr:`Image.data`). Data is always a
torch tensor shaped ``(C, X, Y, Z)``: float32 for :class:`ScalarImage`, an integer dtype for
:class:`LabelMap`. Images are immutable in spirit: transforms build new images with
:meth:`Image.with_data` instead of writing into the tensor.
"""

from __future__ import annotations

import errno
import gzip
import io
import math
import os
import resource
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

import nibabel as nib
import numpy as np
import torch
from isal import isal_zlib

from .constants import AFFINE, DATA, INTENSITY, LABEL, PATH, TYPE
from .dtypes import numpy_dtype
from .errors import (
    ImageChangedError,
    ImageFileError,
    ImageFileNotFoundError,
    ImageMemoryError,
    InvalidImageError,
)
from .machine import memory_capacity
from .readers import SITK_EXTRA, open_sitk, reads_with_sitk
from .units import pretty_bytes
from .volumes import empty_volume

PathLike = str | os.PathLike[str]
ImageReader = Callable[[Path], tuple[Any, Any]]
"""A ``reader=``: a path to ``(data, affine)``, as TorchIO's: data an array or tensor shaped
``(C, X, Y, Z)`` (or ``(X, Y, Z)``), affine the 4x4 voxel-to-world matrix (RAS+)."""
GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 31  # zlib's wbits for a gzip stream (16 + a 32 KiB window)

_LABEL_DTYPES: dict[np.dtype[Any], torch.dtype] = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.uint16): torch.int32,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.uint32): torch.int64,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.uint64): torch.int64,
    np.dtype(np.bool_): torch.uint8,
}
_FLOAT_LABEL_DTYPE = torch.int32


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: channels-first shape, the voxels' dtype in the file (native byte
    order; for SimpleITK and ``reader=``, as they return them), affine, the ``(slope, intercept)``
    that scales the stored voxels (``(1.0, 0.0)``: unscaled), and whether the file is a gzipped
    NIfTI that shmqueue inflates itself (``.gz``, as nibabel decides)."""

    shape: tuple[int, int, int, int]
    stored_dtype: np.dtype[Any]
    affine: np.ndarray
    scaling: tuple[float, float] = (1.0, 0.0)
    compressed: bool = False

    @property
    def scaled(self) -> bool:
        """Whether the stored voxels are scaled as they are read."""
        return self.scaling != (1.0, 0.0)

    @property
    def read_dtype(self) -> np.dtype[Any]:
        """The dtype voxels are read as: float32 if scaled, else as stored."""
        return np.dtype(np.float32) if self.scaled else self.stored_dtype

    def changes_to(self, now: ImageHeader) -> list[str]:
        """What differs in ``now``, e.g. ``["shape (40, 36, 32) -> (32, 36, 40)"]``; empty if
        nothing does. The dtype compared is the one voxels are read as, which the ring's layout
        follows."""
        changes = []
        if now.shape != self.shape:
            changes.append(f"shape {_describe_shape(self.shape)} -> {_describe_shape(now.shape)}")
        if now.read_dtype != self.read_dtype:
            changes.append(f"dtype {self.read_dtype} -> {now.read_dtype}")
        if not np.array_equal(now.affine, self.affine):
            changes.append(
                f"affine {_describe_affine(self.affine)} -> {_describe_affine(now.affine)}"
            )
        if now.scaling != self.scaling:
            changes.append(f"(slope, intercept) {self.scaling} -> {now.scaling}")
        return changes


def _describe_shape(shape: tuple[int, int, int, int]) -> str:
    channels, x, y, z = shape
    return f"{(x, y, z)}" if channels == 1 else f"{(x, y, z)} with {channels} channels"


def _describe_affine(affine: np.ndarray) -> str:
    """The top three rows, one line: ``[1 0 0 -10; 0 1.2 0 4.5; 0 0 1.5 30]``."""
    return "[" + "; ".join(" ".join(f"{value:.7g}" for value in row) for row in affine[:3]) + "]"


def _file_header(proxy: Any, path: Path) -> ImageHeader:
    """The header of the file nibabel opened as ``proxy`` (already read: no I/O here)."""
    shape = _channels_first_shape(tuple(proxy.shape), f"Image file '{path}'")
    scaling = (
        float(getattr(proxy.dataobj, "slope", 1.0)),
        float(getattr(proxy.dataobj, "inter", 0.0)),
    )
    stored = np.dtype(proxy.get_data_dtype()).newbyteorder("=")
    affine = np.asarray(proxy.affine, np.float64)
    return ImageHeader(shape, stored, affine, scaling, path.name.endswith(".gz"))


@dataclass(frozen=True)
class _OpenedFile:
    """An image file whose header was read, and a context manager giving its stored voxels,
    unscaled, in any layout that reshapes to the header's ``(X, Y, Z, C)``, valid in its block."""

    header: ImageHeader
    voxels: Callable[[], AbstractContextManager[np.ndarray]]


NIFTI_SUFFIXES = (".nii", ".nii.gz")
SNIFF_BYTES = 1024  # what nibabel reads to tell a file's format: any NIfTI header fits


def _open_nifti_header(path: Path) -> Any | None:
    """The nibabel image of a single-file NIfTI, with one ``open`` of the file (``nib.load``
    opens it twice: once to tell its format, once to read its header); None for any other file.

    The format is told as ``nib.load`` tells it, from the same first bytes. The image's voxels
    cannot be read (its file is closed): it serves for :func:`_file_header` only.
    """
    name = str(path)
    if not name.endswith(NIFTI_SUFFIXES):
        return None
    with open(path, "rb") as raw:
        stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if name.endswith(".gz") else raw
        sniff: Any = (stream.read(SNIFF_BYTES), name)
        stream.seek(0)
        for image_class in nib.imageclasses.all_image_classes:
            is_valid, sniff = image_class.path_maybe_image(name, sniff)
            if is_valid:
                if not issubclass(image_class, nib.Nifti1Image):  # a pair's other file
                    return None
                return image_class.from_file_map({"image": nib.FileHolder(name, stream)})
    return None


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: Python's or numpy's MemoryError, ENOMEM
    from mmap (the volume pool, nibabel's memory-mapped ``.nii``), or torch's CPU allocator,
    which raises a plain RuntimeError."""
    if isinstance(error, MemoryError):
        return True
    if isinstance(error, OSError):
        return error.errno == errno.ENOMEM
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def _channels_first_shape(raw_shape: tuple[int, ...], source: str) -> tuple[int, int, int, int]:
    """Map a NIfTI shape ``(X, Y, Z[, 1][, C])`` to ``(C, X, Y, Z)``, or explain why it can't be."""
    if len(raw_shape) == 3:
        x, y, z = raw_shape
        return (1, x, y, z)
    if len(raw_shape) == 4:
        x, y, z, c = raw_shape
        return (c, x, y, z)
    if len(raw_shape) == 5 and raw_shape[3] == 1:
        x, y, z, _, c = raw_shape
        return (c, x, y, z)
    raise InvalidImageError(
        f"{source} has {len(raw_shape)} dimensions (shape {raw_shape}); shmqueue needs a 3D volume"
        " (X, Y, Z) with optional channels (X, Y, Z, C). Convert 2D slices to 3D volumes with"
        " a singleton axis, or split 4D time series into one image per time point."
    )


def _validate_tensor_shape(shape: tuple[int, ...], source: str) -> tuple[int, int, int, int]:
    if len(shape) == 3:
        x, y, z = shape
        return (1, x, y, z)
    if len(shape) == 4:
        c, x, y, z = shape
        return (c, x, y, z)
    raise InvalidImageError(
        f"{source} has {len(shape)} dimensions (shape {tuple(shape)}); an image tensor must be"
        " (X, Y, Z) or (C, X, Y, Z). Add the channel axis with tensor[None] or drop extra axes."
    )


def _native_byte_order(array: np.ndarray) -> np.ndarray:
    """``array`` in the machine's byte order: torch refuses the other, which NIfTI allows."""
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _read_unscaled(proxy: Any, path: Path) -> np.ndarray:
    """The stored voxels of the image nibabel opened as ``proxy``, unscaled, in the header's shape.

    A single-file gzipped NIfTI (``.nii.gz``; Nifti2Image is a Nifti1Image) is inflated by
    :func:`_inflate`, and the voxels are a view of the inflated bytes. Anything else is read by
    nibabel.
    """
    if isinstance(proxy, nib.Nifti1Image):
        with open(path, "rb") as file:
            if file.read(len(GZIP_MAGIC)) == GZIP_MAGIC:
                file.seek(0)
                stored: Any = proxy.dataobj  # nibabel's ArrayProxy: the voxels' offset and layout
                dtype = np.dtype(stored.dtype)
                size = stored.offset + math.prod(stored.shape) * dtype.itemsize
                voxels: np.ndarray = _inflate(file, size)[stored.offset :].view(dtype)
                return voxels.reshape(stored.shape, order=stored.order)
    return np.asanyarray(proxy.dataobj.get_unscaled())


INFLATE_CHUNK = 2**20


def _inflate(file: BinaryIO, size: int) -> np.ndarray:
    """The first ``size`` bytes the gzip stream in ``file`` inflates to, in a pooled buffer.

    ISA-L inflates twice as fast as zlib (and than nibabel's ``GzipFile`` reads). The file is read
    and inflated 1 MiB at a time into a buffer from the volume pool, so that neither the file nor
    the inflated bytes take fresh pages for every subject (see :mod:`shmqueue.volumes`). The gzip
    member that holds the last voxels is read to its end, so that its checksum is verified.

    Raises:
        OSError: the file inflates to fewer bytes, or ends before its checksum.
        isal_zlib.error: the compressed data or the checksum is wrong.
    """
    inflated = empty_volume((size,), torch.uint8).numpy()
    filled = 0
    decompressor = isal_zlib.decompressobj(wbits=GZIP_WBITS)
    pending = b""
    while not (filled == size and decompressor.eof):
        if not pending:
            pending = file.read(INFLATE_CHUNK)
            if not pending:
                break
        piece = decompressor.decompress(pending, INFLATE_CHUNK)
        kept = min(len(piece), size - filled)  # a longer stream's rest is checked, not kept
        inflated[filled : filled + kept] = np.frombuffer(piece, np.uint8, kept)
        filled += kept
        if decompressor.eof and filled < size:  # the end of a gzip member; another follows
            pending = decompressor.unused_data
            decompressor = isal_zlib.decompressobj(wbits=GZIP_WBITS)
        else:
            pending = decompressor.unconsumed_tail
    if filled < size:
        raise OSError(f"the file inflates to {filled} bytes but its header describes {size}")
    if not decompressor.eof:
        raise OSError("the file ends before its gzip checksum")
    return inflated


def shift_affine(affine: np.ndarray, index: tuple[int, int, int]) -> np.ndarray:
    """The affine of a patch whose first voxel is at ``index`` of an image with ``affine``."""
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, :3] @ np.asarray(index, dtype=np.float64)
    return shifted


class DeferredSource(Protocol):
    """Voxels computed when read (:mod:`shmqueue.augmentation.deferred`): a box at a time, or
    all at once."""

    @property
    def channels(self) -> int: ...

    @property
    def shape(self) -> tuple[int, int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def patch(self, index: tuple[int, int, int], size: tuple[int, int, int]) -> torch.Tensor: ...

    def whole(self) -> torch.Tensor: ...


class Image:
    """A 3D image with channels, from a path or from a tensor/array.

    Args:
        path_or_data: a path to an image file, or a tensor/array shaped ``(C, X, Y, Z)`` or
            ``(X, Y, Z)``. NIfTI (``.nii``, ``.nii.gz``) and anything nibabel reads is read by
            nibabel; NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``), DICOM files
            (``.dcm``) and directories holding one DICOM series by SimpleITK (install
            ``shmqueue[sitk]``), its LPS world turned to RAS+.
        affine: the 4x4 voxel-to-world matrix for in-memory data (identity when omitted). For
            files it comes from the header.
        reader: reads a path in any other format: a callable ``path -> (data, affine)`` as
            TorchIO's ``reader``, data an array or tensor shaped ``(C, X, Y, Z)`` or
            ``(X, Y, Z)`` in any dtype (loaded by the same rules as a file's), affine 4x4
            (RAS+). It has no header-only read: the header (shape, dtype, affine; needed when
            a queue is built) costs one call, whose data is dropped, and each load one more.
            Workers started by spawn or forkserver get it pickled: pass a module-level function
            or a picklable object, not a lambda.

    Raises:
        ImageFileNotFoundError: the path does not exist.
        InvalidImageError: the data has the wrong number of dimensions.
        TypeError: ``affine`` given with a path, ``reader`` with data, or ``reader`` not callable.

    Example:
        >>> import torch, shmqueue as sq
        >>> image = sq.ScalarImage(torch.zeros(1, 8, 8, 8))
        >>> image.spatial_shape
        (8, 8, 8)
    """

    kind: ClassVar[str] = "image"
    _deferred: DeferredSource | None = None
    type: ClassVar[str] = INTENSITY
    """TorchIO's type of the image: :data:`~shmqueue.INTENSITY`, or :data:`~shmqueue.LABEL`
    for a :class:`LabelMap`."""

    def __init__(
        self,
        path_or_data: PathLike | torch.Tensor | np.ndarray | None = None,
        *,
        affine: Any = None,
        reader: ImageReader | None = None,
        path: PathLike | None = None,
        tensor: torch.Tensor | np.ndarray | None = None,
    ):
        sources = [source for source in (path_or_data, path, tensor) if source is not None]
        if len(sources) != 1:
            raise TypeError(
                f"A {type(self).__name__} needs one source: a path or a tensor, as its first"
                f" argument or as path= or tensor= (TorchIO's keywords); got {len(sources)}."
            )
        if tensor is not None and not isinstance(tensor, (torch.Tensor, np.ndarray)):
            raise TypeError(f"tensor= must be a tensor or an array, got {type(tensor).__name__}")
        path_or_data = sources[0]
        self.path: Path | None = None
        self._data: torch.Tensor | None = None
        self._header: ImageHeader | None = None
        self._reader = reader
        if reader is not None and not callable(reader):
            raise TypeError(f"reader must be callable (path -> (data, affine)), got {reader!r}")
        if isinstance(path_or_data, np.ndarray):
            path_or_data = _native_byte_order(path_or_data)
        if isinstance(path_or_data, (torch.Tensor, np.ndarray)):
            tensor = torch.as_tensor(path_or_data)
            shape = _validate_tensor_shape(tuple(tensor.shape), f"In-memory {self.kind}")
            self._data = self._convert_dtype(tensor.reshape(shape), f"in-memory {self.kind}")
            matrix = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
            if matrix.shape != (4, 4):
                raise InvalidImageError(f"affine must be 4x4, got shape {matrix.shape}")
            stored = numpy_dtype(self._data.dtype)
            self._header = ImageHeader(shape, stored, matrix)
            if reader is not None:
                raise TypeError("reader reads a path; in-memory data needs none")
        else:
            if affine is not None:
                raise TypeError("affine is read from the file's header; pass it only with data")
            self.path = Path(path_or_data).expanduser()
            if not self.path.exists():  # a directory is a DICOM series, or the reader's to read
                raise ImageFileNotFoundError(
                    f"Image file not found: '{self.path}' (resolved from '{Path.cwd()}'). Check"
                    " the path, or that the dataset is mounted."
                )

    # Header ---------------------------------------------------------------------------------

    @property
    def header(self) -> ImageHeader:
        """Shape, stored dtype, affine, scaling and compression, read from the file's header
        without reading voxels (a NIfTI file is opened once for it; a DICOM series' first and
        last files), except with ``reader=``, which is called once for it."""
        if self._header is None:
            self._header = self._open(header_only=True).header
        return self._header

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(C, X, Y, Z)``."""
        if self._data is not None:
            c, x, y, z = self._data.shape
            return (c, x, y, z)
        if self._deferred is not None:
            return (self._deferred.channels, *self._deferred.shape)
        return self.header.shape

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(X, Y, Z)``."""
        _, x, y, z = self.shape
        return (x, y, z)

    @property
    def num_channels(self) -> int:
        return self.shape[0]

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 voxel-to-world matrix (float64)."""
        return self.header.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in world units along each axis, from the affine."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of :attr:`data` once loaded (known from the header)."""
        if self._data is not None:
            return self._data.dtype
        if self._deferred is not None:
            return self._deferred.dtype
        return self._loaded_dtype(self.header.read_dtype)

    # Data -----------------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        return self._data is not None

    @property
    def data(self) -> torch.Tensor:
        """The voxels as a ``(C, X, Y, Z)`` tensor, read from disk on first access."""
        if self._data is None:
            self.load()
        assert self._data is not None
        return self._data

    def __getitem__(self, key: str) -> Any:
        """TorchIO 1.x's dict access: ``image[DATA]``, ``image[AFFINE]``, ``image[PATH]``,
        ``image[TYPE]`` (the constants of :mod:`shmqueue.constants`)."""
        if key == DATA:
            return self.data
        if key == AFFINE:
            return self.affine
        if key == PATH:
            return self.path
        if key == TYPE:
            return self.type
        raise KeyError(f"{key!r}: an image has {[DATA, AFFINE, PATH, TYPE]}")

    def load(self) -> None:
        """Read the voxels (no-op when loaded). Never goes through float64.

        The header that comes with the voxels must match :attr:`header`, which the queue read
        when it was built and laid its ring out from: voxels read with a stale header would be
        scrambled. The stored voxels are copied once, reordered channels-first and converted to
        the loaded dtype in the same pass; scaled voxels are then scaled in place.

        Raises:
            ImageChangedError: the file's shape, dtype, affine or scaling changed since its
                header was read.
            ImageFileNotFoundError: the file was deleted or moved since.
            ImageMemoryError: memory ran out while inflating or converting the voxels.
            ImageFileError: the file is truncated or corrupt.
        """
        if self._data is not None:
            return
        if self._deferred is not None:
            self._data, self._deferred = self._deferred.whole(), None
            return
        opened = self._open()  # reads the header: compared below at no extra cost
        now = opened.header
        if self._header is None:
            self._header = now
        elif changes := self._header.changes_to(now):
            raise ImageChangedError(
                f"Image file '{self.path}' changed since the queue was built (when its header"
                f" was read): {'; '.join(changes)}. Its voxels no longer fit the layout taken"
                " from that header. Rebuild the subjects and the queue after editing image files,"
                " or leave the files unchanged while a queue reads them."
            )
        try:
            self._data = self._read_voxels(opened)
        except Exception as error:
            if not _is_out_of_memory(error):
                raise
            raise self._out_of_memory(now) from error

    def _read_voxels(self, opened: _OpenedFile) -> torch.Tensor:
        """The voxels of the file ``opened``, as :meth:`load` describes."""
        header = opened.header
        shape = header.shape
        with ExitStack() as reading:
            try:
                array = reading.enter_context(opened.voxels())
            except FileNotFoundError as error:
                raise self._missing() from error
            except ImageFileError:
                raise
            except Exception as error:
                if _is_out_of_memory(error):
                    raise
                raise ImageFileError(
                    f"Cannot read the voxels of '{self.path}': {type(error).__name__}: {error}."
                    " The file is probably truncated or corrupt; re-export or re-copy it."
                ) from error
            array = array.reshape((*shape[1:], shape[0]))  # (X, Y, Z, C) from any accepted layout
            stored = array.dtype.newbyteorder("=")
            slope, inter = header.scaling
            scaled = header.scaling != (1.0, 0.0)
            target = torch.float32 if scaled else self._loaded_dtype(stored)
            if stored.kind == "f" and not target.is_floating_point:
                # A float label map: kept as stored until _convert_dtype checks it holds integers.
                target = torch.float64 if stored.itemsize == 8 else torch.float32
            tensor = empty_volume(shape, target)
            np.copyto(tensor.numpy(), np.moveaxis(array, -1, 0), casting="unsafe")
        if scaled:
            tensor.mul_(slope).add_(inter)
        return self._convert_dtype(tensor, f"image file '{self.path}'")

    def _out_of_memory(self, header: ImageHeader) -> ImageMemoryError:
        """The error for memory running out while loading, with what was needed and what is left."""
        stored = math.prod(header.shape) * header.stored_dtype.itemsize
        loaded_dtype = self._loaded_dtype(header.read_dtype)
        loaded = math.prod(header.shape) * loaded_dtype.itemsize
        address_space, _ = resource.getrlimit(resource.RLIMIT_AS)
        limit = (
            "no address-space limit (ulimit -v) is set"
            if address_space == resource.RLIM_INFINITY
            else f"the address-space limit (ulimit -v) is {pretty_bytes(address_space)}"
        )
        return ImageMemoryError(
            f"Out of memory while loading '{self.path}': it needs {pretty_bytes(stored + loaded)}"
            f" ({pretty_bytes(stored)} for the stored voxels as read or inflated,"
            f" {pretty_bytes(loaded)} for the {str(loaded_dtype).removeprefix('torch.')} volume)."
            f" Memory now: {memory_capacity().description}; {limit}. Lower num_workers (each"
            " worker loads a subject at a time), or raise `ulimit -v` or the job's memory limit."
        )

    def _missing(self) -> ImageFileNotFoundError:
        """The error for a file that existed when this image was made and is gone now."""
        since = (
            "since the queue was built (when its header was read)"
            if self._header is not None
            else f"since the {type(self).__name__} was created"
        )
        return ImageFileNotFoundError(
            f"Image file '{self.path}' no longer exists: it was deleted or moved {since}. Restore"
            " it, or rebuild the subjects and the queue without it."
        )

    def unload(self) -> None:
        """Drop the voxels of a file-backed image (in-memory images keep theirs)."""
        if self.path is not None:
            self._data = None

    def copy(self) -> Image:
        """A new Image object sharing this one's path, header and (immutable) tensor."""
        image = object.__new__(type(self))
        image.__dict__.update(self.__dict__)
        return image

    def with_data(self, data: torch.Tensor) -> Image:
        """A new image of the same kind, path and affine holding ``data`` (``(C, X, Y, Z)``)."""
        shape = _validate_tensor_shape(tuple(data.shape), f"Data for {self.describe()}")
        image = self.copy()
        image._data = data.reshape(shape)
        image._deferred = None
        return image

    def voxelless(self) -> Image:
        """A copy of this image without its voxels (loaded, in memory or deferred): its kind,
        path, header and reader, what :mod:`shmqueue.cache` stores beside the voxels, which it
        stores apart to map them back with :meth:`with_data`."""
        image = self.copy()
        image._data = None
        image._deferred = None
        return image

    def deferred(self, voxels: DeferredSource) -> Image:
        """A new image of the same kind, path and affine whose voxels ``voxels`` computes when
        they are read: a region at a time (:meth:`voxels_at`, :meth:`crop`), or all of them on
        first access to :attr:`data`."""
        image = self.copy()
        image._data = None
        image._deferred = voxels
        return image

    def voxels_at(self, index: tuple[int, int, int], size: tuple[int, int, int]) -> torch.Tensor:
        """The voxels of the box ``index : index + size``, ``(C, *size)``: a view of the loaded
        data, or computed for that box alone if the image is deferred (never to be written
        into)."""
        if self._data is None and self._deferred is not None:
            return self._deferred.patch(index, size)
        region = tuple(slice(start, start + length) for start, length in zip(index, size))
        return self.data[(slice(None), *region)]

    def crop(self, index: tuple[int, int, int], size: tuple[int, int, int]) -> Image:
        """A copy of the region ``index : index + size`` (never a view), with a shifted affine."""
        return self.as_patch(self.voxels_at(index, size).clone(), index)

    def as_patch(
        self, data: torch.Tensor, index: tuple[int, int, int], affine: np.ndarray | None = None
    ) -> Image:
        """An image of the same kind and path holding ``data`` as the patch starting at ``index``.

        Its affine maps the patch's first voxel to where ``index`` lies in the volume the patch
        was cut from, whose affine is ``affine`` (by default this image's).
        """
        image = self.with_data(data)
        source_affine = self.affine if affine is None else affine
        image._header = ImageHeader(
            image.shape, self.header.read_dtype, shift_affine(source_affine, index)
        )
        return image

    def describe(self) -> str:
        """``"ScalarImage '/data/t1.nii.gz'"`` or ``"in-memory ScalarImage"``, for messages."""
        where = f"'{self.path}'" if self.path is not None else "(in memory)"
        return f"{type(self).__name__} {where}"

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        source = f"path='{self.path}'" if self.path is not None else "in memory"
        return f"{type(self).__name__}({source}, shape={self.shape}, {state})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "_data": self._data if self._deferred is None else self.data,
            "_header": self._header,
            "_reader": self._reader,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # Subclass hooks ---------------------------------------------------------------------------

    def _open(self, header_only: bool = False) -> _OpenedFile:
        """The file with its header read, by ``reader=``, SimpleITK or nibabel; with
        ``header_only``, possibly one whose voxels cannot be read (see
        :func:`_open_nifti_header`)."""
        path = self.path
        assert path is not None
        if self._reader is not None:
            return self._open_with_reader(path)
        if not path.exists():
            raise self._missing()
        if reads_with_sitk(path):
            opened = open_sitk(path)
            return _OpenedFile(
                ImageHeader(opened.shape, opened.dtype, opened.affine), opened.voxels
            )
        try:
            image = _open_nifti_header(path) if header_only else None
            proxy = nib.load(path) if image is None else image
        except FileNotFoundError as error:
            raise self._missing() from error
        except Exception as error:
            raise ImageFileError(
                f"Cannot read the header of '{path}': {type(error).__name__}: {error}. shmqueue"
                " reads NIfTI (.nii, .nii.gz) and what nibabel reads; NRRD, MHA/MHD and DICOM"
                f" with SimpleITK ({SITK_EXTRA}); any other format with reader=."
            ) from error
        return _OpenedFile(
            _file_header(proxy, path), lambda: nullcontext(_read_unscaled(proxy, path))
        )

    def _open_with_reader(self, path: Path) -> _OpenedFile:
        """The file as ``reader=`` reads it: its voxels, and the header made from them."""
        assert self._reader is not None
        name = getattr(self._reader, "__qualname__", repr(self._reader))
        try:
            data, affine = self._reader(path)
        except FileNotFoundError as error:
            raise self._missing() from error
        except Exception as error:
            if _is_out_of_memory(error):
                raise
            raise ImageFileError(
                f"The reader {name} failed on '{path}': {type(error).__name__}: {error}"
            ) from error
        array = data.numpy(force=True) if isinstance(data, torch.Tensor) else np.asarray(data)
        source = f"The data {name} read from '{path}'"
        shape = _validate_tensor_shape(array.shape, source)
        matrix = np.asarray(affine, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise InvalidImageError(
                f"{source} came with an affine of shape {matrix.shape}, not 4x4"
            )
        array = _native_byte_order(array).reshape(shape)
        header = ImageHeader(shape, array.dtype, matrix)
        return _OpenedFile(header, lambda: nullcontext(np.moveaxis(array, 0, -1)))

    def _loaded_dtype(self, stored: np.dtype[Any]) -> torch.dtype:
        raise NotImplementedError

    def _convert_dtype(self, tensor: torch.Tensor, source: str) -> torch.Tensor:
        raise NotImplementedError


class ScalarImage(Image):
    """Intensities (MRI, CT). Data is float32.

    Example:
        >>> import numpy as np, shmqueue as sq
        >>> sq.ScalarImage(np.zeros((4, 4, 4), np.int16)).data.dtype
        torch.float32
    """

    kind = "scalar image"

    def _loaded_dtype(self, stored: np.dtype[Any]) -> torch.dtype:
        return torch.float32

    def _convert_dtype(self, tensor: torch.Tensor, source: str) -> torch.Tensor:
        return tensor.to(torch.float32)


class LabelMap(Image):
    """A segmentation. Data keeps an integer dtype: the stored one if torch has it, else wider.

    Float-stored label maps load as int32 and must hold whole numbers.

    Example:
        >>> import numpy as np, shmqueue as sq
        >>> sq.LabelMap(np.ones((4, 4, 4), np.uint8)).data.dtype
        torch.uint8
    """

    kind = "label map"
    type = LABEL

    def _loaded_dtype(self, stored: np.dtype[Any]) -> torch.dtype:
        return _LABEL_DTYPES.get(np.dtype(stored), _FLOAT_LABEL_DTYPE)

    def _convert_dtype(self, tensor: torch.Tensor, source: str) -> torch.Tensor:
        if tensor.is_floating_point():
            if not torch.equal(tensor, tensor.round()):
                raise InvalidImageError(
                    f"The {source} holds non-integer values, so it cannot be a label map. Load it"
                    " as a ScalarImage, or round it to integer labels first."
                )
            return tensor.to(_FLOAT_LABEL_DTYPE)
        stored = np.dtype(str(tensor.dtype).removeprefix("torch."))
        return tensor.to(_LABEL_DTYPES.get(stored, torch.int64))
