"""DICOMweb (e.g. Orthanc) as the MONAI Label datastore for radiographs: CR/DX series in, DICOM SEG out.

Built on MONAI Label's ``DICOMWebDatastore`` (QIDO search, WADO download into a local cache, label
bookkeeping), with what 2D chest radiographs need:

- images are the series of the configured modalities (default CR and DX; one QIDO query per modality, since
  QIDO has no portable "one of" match), each kept as its downloaded instance file, never converted to NIfTI:
  the infer tasks read the DICOM itself (``cxrfx.io``: VOI LUT, MONOCHROME1, orientation);
- a saved segmentation label (the model's output or an annotator's final mask, an index-map PNG) is written as
  a BINARY DICOM SEG with highdicom (:func:`cxrfx.outputs.dicom_seg.write_dicom_seg`, one segment per class,
  referencing the source instance) and stored to the server (STOW-RS); its series description tells model
  output (``cxrfx model output``) from annotation (``cxrfx annotation``);
- "labelled" means a final label in the local cache or an annotation SEG on the server that references the
  series, so model outputs stored back do not hide images from active learning;
- no dcmqi download and no pydicom-seg / SimpleITK conversion (MONAI Label's defaults): nothing is fetched from
  the internet.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from cxrfx.errors import ConfigError

from monailabel.datastore.dicom import DICOMWebDatastore, DICOMwebClientX  # noqa: I001 (label venv only)
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

__all__ = ["RadiographDICOMwebDatastore", "make_client", "ANNOTATION", "MODEL_OUTPUT"]

logger = logging.getLogger(__name__)
ANNOTATION, MODEL_OUTPUT = "cxrfx annotation", "cxrfx model output"


def make_client(url: str, username: str | None = None, password: str | None = None):
    """A DICOMweb client for ``url`` (e.g. ``http://127.0.0.1:8042/dicom-web``), with basic auth if given."""
    session = None
    if username and password:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(username, password)
    return DICOMwebClientX(url=url, session=session)


class RadiographDICOMwebDatastore(DICOMWebDatastore):
    """See the module docstring. ``classes``: segmentation class names, index k -> ``classes[k-1]``."""

    def __init__(self, client, classes: list[str], modalities=("CR", "DX"), cache_path: str | None = None):
        self.modalities, self.classes = tuple(modalities), list(classes)
        super().__init__(client, search_filter={"Modality": self.modalities[0]}, cache_path=cache_path,
                         fetch_by_frame=False, convert_to_nifti=False)

    # -- images ----------------------------------------------------------------------------------------------
    def list_images(self) -> list[str]:
        from pydicom import Dataset

        series = []
        for modality in self.modalities:
            for ds in self._client.search_for_series(search_filters={"Modality": modality}):
                uid = str(Dataset.from_json(ds)["SeriesInstanceUID"].value)
                if uid not in series:
                    series.append(uid)
        return series

    def status(self) -> dict:
        """What ``/info`` reports: the server's CR/DX series, not only those downloaded so far."""
        out = LocalDatastore.status(self)
        out.update(total=len(self.list_images()), completed=len(self.get_labeled_images()))
        return out

    def get_image_uri(self, image_id: str) -> str:
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        if not os.path.isdir(image_dir) or not os.listdir(image_dir):
            dicom_web_download_series(None, image_id, image_dir, self._client, self._fetch_by_frame)
        if image_id not in self._datastore.objects:  # known locally, so labels can be saved against it
            LocalDatastore.add_image(self, image_id, self._instance(image_dir), self._dicom_info(image_id))
        return image_dir

    @staticmethod
    def _instance(image_dir: str) -> str:
        files = sorted(f for f in os.listdir(image_dir) if os.path.isfile(os.path.join(image_dir, f)))
        if not files:
            raise ConfigError(f"{image_dir}: the series download holds no instance")
        return os.path.join(image_dir, files[0])

    def _to_id(self, file: str):
        # Series UIDs are dotted numbers: only a real extension may be cut (LocalDatastore would cut ".123...")
        for ext in (".dcm", ".png", ".json", ".nii.gz"):
            if file.endswith(ext):
                return file[: -len(ext)], ext
        return file, ""

    # -- labels ----------------------------------------------------------------------------------------------
    def _remote_annotated(self) -> set[str]:
        from pydicom import Dataset

        found = set()
        for ds in self._client.search_for_series(search_filters={"Modality": "SEG"},
                                                 fields=["SeriesDescription"]):
            d = Dataset.from_json(ds)
            if not str(d.get("SeriesDescription", "")).startswith(ANNOTATION):
                continue
            meta = Dataset.from_json(self._client.retrieve_series_metadata(
                str(d.StudyInstanceUID), str(d.SeriesInstanceUID))[0])
            for ref in meta.get("ReferencedSeriesSequence", []):
                found.add(str(ref.SeriesInstanceUID))
        return found

    def get_labeled_images(self, label_tag=None, labels=None) -> list[str]:
        local = set(LocalDatastore.get_labeled_images(self, label_tag or DefaultLabelTag.FINAL, labels))
        return sorted((local | self._remote_annotated()) & set(self.list_images()))

    def get_unlabeled_images(self, label_tag=None, labels=None) -> list[str]:
        labelled = set(self.get_labeled_images(label_tag, labels))
        return [s for s in self.list_images() if s not in labelled]

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        return LocalDatastore.get_label_uri(self, label_id, label_tag)

    def datalist(self, full_path=True):
        """Final labels saved through this server (kept in the local cache), as MONAI Label pairs."""
        return LocalDatastore.datalist(self, full_path)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict, label_id: str = ""):
        """Keep the label locally; a segmentation label (index-map image) also goes to the server as DICOM SEG."""
        image_dir = self.get_image_uri(image_id)
        if label_filename.lower().endswith((".png", ".nrrd", ".nii.gz", ".nii")):
            seg_uid = self._store_seg(self._instance(image_dir), label_filename, label_tag)
            label_info = dict(label_info or {}, SeriesInstanceUID=seg_uid)
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)

    def _store_seg(self, source: str, label_file: str, label_tag: str) -> str:
        import pydicom

        from cxrfx.io.transforms import LoadMaskd  # noqa: F401 (documents the reader family used below)
        from cxrfx.outputs.dicom_seg import write_dicom_seg

        index = _read_index_map(label_file)
        masks = {name: index == k + 1 for k, name in enumerate(self.classes)}
        what = ANNOTATION if label_tag == DefaultLabelTag.FINAL else MODEL_OUTPUT
        tag = getattr(label_tag, "value", label_tag)  # MONAI Label's default is the enum: "original", not its repr
        with tempfile.TemporaryDirectory() as tmp:
            path = write_dicom_seg(source, masks, os.path.join(tmp, "seg.dcm"), series_description=f"{what} ({tag})")
            ds = pydicom.dcmread(path)
            self._client.store_instances([ds])
        logger.info(f"DICOM SEG {ds.SeriesInstanceUID} ({what}) stored for {source}")
        return str(ds.SeriesInstanceUID)


def _read_index_map(path: str) -> np.ndarray:
    """An index-map label (PNG, NRRD or NIfTI) as an (H, W) integer array in the image's orientation."""
    if path.lower().endswith(".nrrd"):  # an inference result OHIF asked for (save_label)
        from cxrfx.io.volume import read_nrrd

        return np.rint(read_nrrd(path)[0]).astype(np.int64)
    if path.lower().endswith(".png"):
        from PIL import Image

        return np.asarray(Image.open(path)).astype(np.int64)
    import nibabel as nib

    data = np.asarray(nib.load(path).dataobj).squeeze()
    return np.rint(data.T).astype(np.int64)  # NIfTI stores (W, H) for a 2D image written by MONAI
