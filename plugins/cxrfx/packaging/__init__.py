"""Model Zoo packaging: pre-flight checks, vendoring of the cxrfx code a bundle's configs use, the archive,
and safe unpacking (``python -m cxrfx package`` / ``install``; docs/model_zoo.md)."""

from cxrfx.packaging.archive import PackageResult, package_bundle
from cxrfx.packaging.checks import BundleCheckError
from cxrfx.packaging.unpack import ArchiveError, check_members, install_bundle, unpack

__all__ = ["package_bundle", "PackageResult", "BundleCheckError", "ArchiveError", "check_members", "unpack",
           "install_bundle"]
