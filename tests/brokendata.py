"""Writers of broken and hostile inputs, made by the tests in a temporary folder.

Nothing here is shipped. Each ``make_*`` function writes one input under ``root`` and
returns its path (a file or a folder). :data:`NIFTI_CASES` and :data:`DICOM_CASES` map a
case name to its writer; :func:`cut_corpus_files` cuts real corpus files where that is
more realistic than a synthetic one.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from test_dicom import rand_slices, write_series

# --- NIfTI ----------------------------------------------------------------------------------

#: Shape (z, y, x) of the small synthetic volumes: large enough to resample and tokenise.
SHAPE = (24, 40, 36)
#: Byte offsets of NIfTI-1 header fields.
_DIM, _DATATYPE, _BITPIX, _VOX_OFFSET = 40, 70, 72, 108


def volume(dtype=np.int16, shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1500, shape).astype(dtype)


def write_nifti(path, arr, spacing=(0.9, 0.9, 3.0)) -> Path:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return Path(path)


def patch_nifti(path, fields: dict) -> Path:
    """Overwrite header fields {offset: (struct format, values)} of a .nii or .nii.gz."""
    path = Path(path)
    gz = path.name.endswith(".gz")
    data = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    for off, (fmt, values) in fields.items():
        struct.pack_into(fmt, data, off, *values)
    path.write_bytes(gzip.compress(bytes(data), mtime=0) if gz else bytes(data))
    return path


def good_nifti(root, name, gz=True, dtype=np.int16, arr=None) -> Path:
    arr = volume(dtype) if arr is None else arr
    Path(root).mkdir(parents=True, exist_ok=True)
    return write_nifti(Path(root) / (name + (".nii.gz" if gz else ".nii")), arr)


def make_zero_byte_nii(root):
    p = Path(root) / "zero.nii"
    p.write_bytes(b"")
    return p


def make_zero_byte_niigz(root):
    p = Path(root) / "zero.nii.gz"
    p.write_bytes(b"")
    return p


def make_zero_byte_dcm(root):
    p = Path(root) / "zero.dcm"
    p.write_bytes(b"")
    return p


def make_truncated_niigz(root, fraction):
    """A .nii.gz cut at ``fraction`` of its compressed length (0 < fraction < 1), or at
    ``-fraction`` bytes from the end when ``fraction`` is a negative integer."""
    p = good_nifti(root, f"trunc_{str(fraction).replace('.', '_').replace('-', 'm')}")
    data = p.read_bytes()
    cut = len(data) + fraction if isinstance(fraction, int) else int(len(data) * fraction)
    p.write_bytes(data[:cut])
    return p


def make_truncated_nii(root):
    p = good_nifti(root, "trunc_raw", gz=False)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _flip_byte(p: Path, offset: int, mask: int) -> Path:
    data = bytearray(p.read_bytes())
    data[offset] ^= mask
    p.write_bytes(bytes(data))
    return p


def make_bad_crc(root):
    """Intact deflate stream, wrong CRC32 in the gzip trailer."""
    return _flip_byte(good_nifti(root, "bad_crc"), -8, 0xFF)


def make_bad_isize(root):
    """Intact deflate stream and CRC, wrong ISIZE (uncompressed length) in the trailer."""
    return _flip_byte(good_nifti(root, "bad_isize"), -4, 0x01)


def make_huge_dims(root, gz):
    """Header claims 30000^3 int16 voxels (54 TB) in a file of a few kB."""
    p = good_nifti(root, "huge_dims", gz=gz)
    return patch_nifti(p, {_DIM: ("<8h", (3, 30000, 30000, 30000, 1, 1, 1, 1))})


def make_big_claim_gz(root):
    """Claims 1100^3 int16 (2.7 GB, within deflate's ratio of the 3 MB file) and holds
    3 MB: must be refused before a 2.7 GB buffer is allocated."""
    p = good_nifti(root, "big_claim")
    header = bytearray(gzip.decompress(p.read_bytes())[:352])
    struct.pack_into("<8h", header, _DIM, 3, 1100, 1100, 1100, 1, 1, 1, 1)
    payload = np.random.default_rng(1).integers(0, 255, 3 << 20, dtype=np.uint8).tobytes()
    p.write_bytes(gzip.compress(bytes(header) + payload, compresslevel=1, mtime=0))
    return p


def make_huge_dims_scaled(root):
    """Huge dims in a file that SimpleITK would read itself (intensity scaling)."""
    p = good_nifti(root, "huge_scaled", gz=False)
    return patch_nifti(p, {_DIM: ("<8h", (3, 30000, 30000, 30000, 1, 1, 1, 1)), 112: ("<ff", (2.0, 1.0))})


def make_negative_dims(root):
    p = good_nifti(root, "negative_dims")
    return patch_nifti(p, {_DIM: ("<8h", (3, -36, 40, 24, 1, 1, 1, 1))})


def make_offset_past_end(root):
    p = good_nifti(root, "offset_past_end", gz=False)
    return patch_nifti(p, {_VOX_OFFSET: ("<f", (1.0e7,))})


def make_offset_past_end_gz(root):
    p = good_nifti(root, "offset_past_end_gz")
    return patch_nifti(p, {_VOX_OFFSET: ("<f", (1.0e7,))})


def make_unknown_datatype(root):
    p = good_nifti(root, "unknown_datatype")
    return patch_nifti(p, {_DATATYPE: ("<hh", (999, 16))})


def make_nan_float(root):
    arr = volume(np.float32)
    arr[5, 10:20, 10:20] = np.nan
    return good_nifti(root, "nan_voxels", arr=arr)


def make_inf_float(root):
    arr = volume(np.float64)
    arr[7, 3, 4] = np.inf
    arr[8, 3, 4] = -np.inf
    return good_nifti(root, "inf_voxels", arr=arr)


def make_constant(root):
    return good_nifti(root, "constant", arr=np.full(SHAPE, 40, np.int16))


def make_one_voxel(root):
    return good_nifti(root, "one_voxel", arr=np.zeros((1, 1, 1), np.int16))


def make_one_slice(root):
    return good_nifti(root, "one_by_n_by_n", arr=volume(shape=(1, 40, 36)))


def make_too_small(root):
    return good_nifti(root, "too_small", arr=volume(shape=(2, 3, 3)))


NIFTI_CASES = {
    "zero_byte_nii": make_zero_byte_nii,
    "zero_byte_niigz": make_zero_byte_niigz,
    "zero_byte_dcm": make_zero_byte_dcm,
    "truncated_gz_in_gzip_header": lambda r: make_truncated_niigz(r, 0.002),
    "truncated_gz_quarter": lambda r: make_truncated_niigz(r, 0.25),
    "truncated_gz_half": lambda r: make_truncated_niigz(r, 0.5),
    "truncated_gz_trailer": lambda r: make_truncated_niigz(r, -4),
    "truncated_nii": make_truncated_nii,
    "bad_crc": make_bad_crc,
    "bad_isize": make_bad_isize,
    "huge_dims_gz": lambda r: make_huge_dims(r, True),
    "huge_dims_nii": lambda r: make_huge_dims(r, False),
    "huge_dims_scaled": make_huge_dims_scaled,
    "big_claim_gz": make_big_claim_gz,
    "negative_dims": make_negative_dims,
    "offset_past_end": make_offset_past_end,
    "offset_past_end_gz": make_offset_past_end_gz,
    "unknown_datatype": make_unknown_datatype,
    "nan_float32": make_nan_float,
    "inf_float64": make_inf_float,
    "constant": make_constant,
    "one_voxel": make_one_voxel,
    "one_by_n_by_n": make_one_slice,
    "too_small": make_too_small,
}

# --- DICOM ----------------------------------------------------------------------------------


def _series(root, name, n=5, shape=(32, 32), **kw) -> tuple[Path, list]:
    folder = Path(root) / name
    return folder, write_series(folder, rand_slices(n, shape=shape, hi=2000), **kw)


def make_dicom_pixels_cut(root):
    folder, paths = _series(root, "pixels_cut")
    paths[2].write_bytes(paths[2].read_bytes()[:-300])
    return folder


def make_dicom_pixels_missing(root):
    folder, paths = _series(root, "pixels_missing")
    ds = pydicom.dcmread(paths[3])
    del ds.PixelData
    ds.save_as(paths[3])
    return folder


def make_dicom_single_no_pixels(root):
    _, paths = _series(root, "single_no_pixels", n=1)
    ds = pydicom.dcmread(paths[0])
    del ds.PixelData
    ds.save_as(paths[0])
    return paths[0]


def make_dicom_huge_rows(root):
    """Rows x Columns x NumberOfFrames claims ~8.6 GB, the file holds 2 kB of pixels."""
    _, paths = _series(root, "huge_rows", n=1)
    ds = pydicom.dcmread(paths[0])
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1
    ds.save_as(paths[0])
    return paths[0]


def make_dicom_huge_frames(root):
    _, paths = _series(root, "huge_frames", n=1)
    ds = pydicom.dcmread(paths[0])
    ds.NumberOfFrames = 2_000_000
    ds.save_as(paths[0])
    return paths[0]


def make_dicom_missing_slice(root):
    folder, _ = _series(root, "missing_slice", n=6, z=[0, 2.5, 5, 10, 12.5, 15])
    return folder


def make_dicom_duplicate_slices(root):
    folder, _ = _series(root, "duplicate_slices", n=6, z=[0, 2.5, 5, 5, 7.5, 10])
    return folder


def make_dicom_mixed_orientations(root):
    """One SeriesInstanceUID, 5 axial + 4 sagittal slices: the 5 axial ones are read."""
    uid = generate_uid()
    folder = Path(root) / "mixed_orientations"
    write_series(folder, rand_slices(5, shape=(32, 32)), uid=uid, names=[f"ax{i}" for i in range(5)])
    write_series(
        folder,
        rand_slices(4, shape=(32, 32)),
        uid=uid,
        iop=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        names=[f"sag{i}" for i in range(4)],
    )
    return folder


def make_dicom_mixed_sizes(root):
    """One SeriesInstanceUID, 5 slices of 32x32 and 3 of 48x48: the 5 are read."""
    uid = generate_uid()
    folder = Path(root) / "mixed_sizes"
    write_series(folder, rand_slices(5, shape=(32, 32)), uid=uid, names=[f"a{i}" for i in range(5)])
    write_series(folder, rand_slices(3, shape=(48, 48)), uid=uid, names=[f"b{i}" for i in range(3)])
    return folder


def make_dicom_mixed_sizes_tie(root):
    """Two geometries of 4 slices each in one SeriesInstanceUID: no silent choice of a
    wrong volume (either one whole geometry or an error)."""
    uid = generate_uid()
    folder = Path(root) / "mixed_sizes_tie"
    write_series(folder, rand_slices(4, shape=(32, 32)), uid=uid, names=[f"a{i}" for i in range(4)])
    write_series(folder, rand_slices(4, shape=(48, 48)), uid=uid, names=[f"b{i}" for i in range(4)])
    return folder


def write_non_image(path) -> Path:
    """A Basic Text SR object: valid DICOM, no pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop = "1.2.840.10008.5.1.4.1.1.88.11"
    inst = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = inst
    ds.SOPClassUID, ds.SOPInstanceUID = sop, inst
    ds.Modality = "SR"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), "1.2.3.4"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def make_dicom_non_image_folder(root):
    folder = Path(root) / "non_image"
    folder.mkdir()
    for i in range(3):
        write_non_image(folder / f"sr{i}.dcm")
    return folder


def make_dicom_non_image_file(root):
    return write_non_image(Path(root) / "report.dcm")


def make_no_images_folder(root):
    folder = Path(root) / "no_images"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "sub" / "data.bin").write_bytes(os.urandom(4096))
    return folder


def make_symlink_loop_folder(root):
    """A series folder holding a symlink to itself and one to its parent."""
    folder, _ = _series(Path(root) / "loop", "series", n=4)
    os.symlink(folder, folder / "self")
    os.symlink(folder.parent, folder / "parent")
    return folder


def make_symlink_loop_only(root):
    """A folder whose only entries are symlink loops: discovery terminates, nothing found."""
    folder = Path(root) / "loop_only"
    folder.mkdir()
    os.symlink(folder, folder / "self")
    os.symlink("me", folder / "me")
    return folder


def make_symlink_self(root):
    """A symlink pointing at itself (ELOOP), given as the path to load."""
    p = Path(root) / "self_link.nii.gz"
    os.symlink(p.name, p)
    return p


def make_dicom_huge_rows_series(root):
    """Three slices each claiming 65535x65535 pixels, holding 2 kB."""
    folder, paths = _series(root, "huge_rows_series", n=3)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.Rows = ds.Columns = 65535
        ds.save_as(p)
    return folder


DICOM_CASES = {
    "dicom_huge_rows_series": make_dicom_huge_rows_series,
    "dicom_pixels_cut": make_dicom_pixels_cut,
    "dicom_pixels_missing": make_dicom_pixels_missing,
    "dicom_single_no_pixels": make_dicom_single_no_pixels,
    "dicom_huge_rows": make_dicom_huge_rows,
    "dicom_huge_frames": make_dicom_huge_frames,
    "dicom_missing_slice": make_dicom_missing_slice,
    "dicom_duplicate_slices": make_dicom_duplicate_slices,
    "dicom_mixed_orientations": make_dicom_mixed_orientations,
    "dicom_mixed_sizes": make_dicom_mixed_sizes,
    "dicom_mixed_sizes_tie": make_dicom_mixed_sizes_tie,
    "dicom_non_image_folder": make_dicom_non_image_folder,
    "dicom_non_image_file": make_dicom_non_image_file,
    "no_images_folder": make_no_images_folder,
    "symlink_loop_folder": make_symlink_loop_folder,
    "symlink_loop_only": make_symlink_loop_only,
    "symlink_self": make_symlink_self,
}

ALL_CASES = {**NIFTI_CASES, **DICOM_CASES}


def make_unreadable(root) -> list[Path]:
    """A readable-by-owner-only NIfTI, a DICOM file and a series folder, all mode 000."""
    root = Path(root)
    nii = good_nifti(root, "secret")
    folder, paths = _series(root, "secret_series", n=4)
    single = write_series(root / "secret_single", rand_slices(1, shape=(16, 16)))[0]
    for p in [nii, single, *paths]:
        os.chmod(p, 0)
    os.chmod(folder, 0)
    return [nii, single, folder]


# --- real corpus files, cut -----------------------------------------------------------------


def cut_corpus_files(corpus: Path, root) -> dict:
    """Real corpus files cut short: {case name: path}."""
    root = Path(root)
    out = {}
    big = (corpus / "ct/phantom_head_1mm.nii.gz").read_bytes()
    for frac in (0.001, 0.3, 0.9999):
        p = root / f"real_cut_{int(frac * 10000)}.nii.gz"
        p.write_bytes(big[: int(len(big) * frac)])
        out[f"real_niigz_cut_{frac}"] = p
    small = corpus / "edge/nifti/anatomical.nii"
    p = root / "real_anatomical_cut.nii"
    data = small.read_bytes()
    p.write_bytes(data[: len(data) - 1000])
    out["real_nii_cut"] = p
    folder = root / "real_series_cut"
    folder.mkdir()
    src = sorted((corpus / "ct/phantom_head_5mm").iterdir())
    for i, f in enumerate(src):
        data = f.read_bytes()
        (folder / f.name).write_bytes(data[: len(data) // 2] if i == 10 else data)
    out["real_series_one_slice_cut"] = folder
    return out
