"""MONAI Label app for 2D chest radiographs (PNG and DICOM) serving the cxrfx bundles.

Runs inside the separate label environment (``make label-env``; see :mod:`cxrfx.label.env`), never the main
``.venv``. Modules: ``env`` (the venv), ``compat`` (imports on pydicom 3 without torchvision), ``served`` (a
bundle's network and weights, reloaded when training rewrites them), ``infer`` (segmentation, detection,
classification tasks), ``train`` (fine-tuning from datastore labels), ``strategies`` (random, epistemic,
teacher-student disagreement, ACFT; scoring in ``acft``), ``validation`` (every request checked, 4xx with a
reason; installed by ``server``), ``auth`` (optional Keycloak token auth, checked before validation),
``dicomweb`` (Orthanc / DICOMweb datastore), ``app`` (the MONAILabelApp), ``studies`` (phantom studies),
``__main__`` (``python -m cxrfx.label serve``).
"""
