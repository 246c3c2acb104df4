"""``python -m cxrfx``: the command line (built with fire).

Commands: ``phantom`` (build the embedded dataset), ``validate`` (check datalists and their files),
``prepare`` (public dataset -> datalist), ``leakage`` (train/test overlaps across datalists),
``demo`` (what ``make demo`` runs), ``predict`` (a bundle on a file / folder / DICOM series), ``calibrate``
(a bundle's decision thresholds on its validation split), ``package`` (a bundle -> Model Zoo archive),
``install`` (a zoo archive -> folder, safely unpacked), ``convert`` (published Foundation X / Ark weights -> a
bundle's ``models/model.pt``). Errors that cxrfx raises on purpose print as one line, exit code 2.
"""

from __future__ import annotations

import builtins
import sys

from cxrfx.errors import CXRFXError


class CLI:
    """cxrfx: Foundation X for MONAI."""

    def phantom(self, out: str, count: int = 64, size: int = 256, seed: int = 0, overwrite: bool = False,
                workers: int | None = None):
        """Build the phantom datasets (phantom_cls, phantom_det, phantom_seg) under OUT.

        Args:
            out: output folder; each dataset gets OUT/<name>/datalist.json.
            count: images per dataset (70/15/15 train/validation/test).
            size: image width in pixels (height is 7/8 of it).
            seed: random seed; the same seed gives the same files.
            overwrite: rebuild even if OUT holds a phantom with the same parameters.
            workers: processes rendering at once (default: one per core from 48 images); same files either way.
        """
        from cxrfx.data.phantom.writer import generate_phantom

        summary = generate_phantom(out, count=count, size=size, seed=seed, overwrite=overwrite, workers=workers)
        for name, info in summary["datasets"].items():
            print(f"{out}/{info['datalist']}: {info['splits']}")
        print(f"phantom built in {summary['seconds']:.1f} s ({summary.get('workers', 1)} worker(s))")

    def validate(self, *datalists: str, workers: int = 0):
        """Check each DATALIST.json: schema, and every file (exists, decodes, mask size, boxes, labels).

        Prints one line per problem and exits 1 if any, else prints a summary and exits 0.
        """
        from cxrfx.data.validate import validate_datalist

        if not datalists:
            raise CXRFXError("validate: give at least one datalist JSON file")
        problems = []
        for path in datalists:
            found = validate_datalist(path, workers=workers)
            problems += found
            print(f"{path}: {'OK' if not found else f'{len(found)} problem(s)'}", file=sys.stderr)
        for line in problems:
            print(line)
        sys.exit(1 if problems else 0)

    def prepare(self, name: str = "", root: str = "", out: str = "", split: str = "official", seed: int = 0,
                views: str = "", harmonise: bool = False, list: bool = False, **options):
        """Turn a public dataset, as distributed and unpacked under ROOT, into a datalist OUT.

        Args:
            name: dataset name (see --list).
            root: the unpacked dataset folder.
            out: datalist JSON to write (masks are decoded next to it).
            split: "official" (where the dataset has one) or "random" (patient-level, seeded).
            seed: seed of random splits.
            views: comma-separated view positions to keep (e.g. PA,AP), where the metadata has them.
            harmonise: map native labels onto the shared pathology vocabulary.
            list: print the supported datasets and exit.
            options: dataset-specific options (e.g. --bbox for nih14, --uncertain ones for chexpert).
        """
        from cxrfx.data.adapters import list_adapters, prepare

        if list:
            for info in list_adapters():
                print(f"{info.name:16s} {'+'.join(info.tasks):40s} {info.source}")
            return
        if not (name and root and out):
            raise CXRFXError("prepare needs NAME --root DIR --out DATALIST.json (or --list)")
        # fire turns "PA,AP" into a tuple and "PA" into a string
        parts = views if isinstance(views, (builtins.list, tuple)) else str(views).split(",") if views else []
        view_list = [str(v).strip() for v in parts if str(v).strip()] or None
        path = prepare(name, root, out, split=split, seed=seed, views=view_list, harmonise=harmonise, **options)
        import json

        with open(path, encoding="utf-8") as f:  # already checked by prepare
            data = json.load(f)
        print(f"{path}: " + ", ".join(f"{s} {len(data.get(s, []))}" for s in ("training", "validation", "test")))

    def leakage(self, *datalists: str, pixels: bool = True):
        """Report images in the training split of one datalist and the validation/test split of another (by
        source id and by pixel hash); exit 1 when any is found."""
        from cxrfx.data.adapters.leakage import find_leakage

        if len(datalists) < 1:
            raise CXRFXError("leakage: give one or more datalist JSON files")
        lines = find_leakage(list(datalists), pixels=pixels)
        for line in lines:
            print(line)
        print(f"{len(lines)} leaking image(s)", file=sys.stderr)
        sys.exit(1 if lines else 0)

    def demo(self, out: str = "runs/demo", count: int | None = None, size: int | None = None, seed: int = 0,
             train: bool = True, epochs: int | None = None):
        """The main job on the phantom: build and validate it, pretrain Foundation X (bundles/foundation_x, demo
        override), score student and teacher on the test split (bootstrap intervals), draw predictions beside
        the ground truth, ROC and learning curves, run inference, write overlays and a summary.

        Args:
            count, size: the phantom's images per dataset and width (default: the demo config's).
            train: False stops after the data part (phantom, validation, overlays).
            epochs: override the demo's number of training cycles.
        """
        from cxrfx.demo import run_demo

        run_demo(out, count=count, size=size, seed=seed, train=train, epochs=epochs)


    def predict(self, bundle: str, input: str, output: str, config: str = "", gradcam: bool = False,
                thresholds: str = "", device: str = "", progress: bool = True, **overrides):
        """Run a bundle on INPUT (image file, folder searched recursively, DICOM series folder) into OUTPUT.

        Per image: JSON, mask PNG + NIfTI, boxes and probabilities CSV (calibrated thresholds, yes/no),
        overlay PNG, DICOM SEG for DICOM inputs, Grad-CAM overlays with --gradcam. Each unreadable file is
        named with its problem; the others are still processed; exit 1 if any failed.

        Args:
            bundle: bundle folder (configs/inference.json, models/model.pt, models/thresholds.json if calibrated).
            config: extra configs merged over inference.json, comma-separated (e.g. demo.json).
            thresholds: thresholds JSON instead of the bundle's models/thresholds.json.
            device: cpu, cuda:0, ... (default: the bundle's).
            overrides: any config id of the bundle, e.g. --image_size 512 --ckpt_path other.pt.
        """
        from cxrfx.predict import main_predict

        config = ",".join(config) if isinstance(config, (builtins.list, tuple)) else config
        sys.exit(main_predict(bundle, input, output, configs=config, gradcam=gradcam, thresholds=thresholds or None,
                              device=device or None, progress=progress, **overrides))

    def calibrate(self, bundle: str, datalist: str = "", config: str = "", split: str = "validation", out: str = "",
                  device: str = "", **overrides):
        """Youden's J threshold per label of every classification head, on the validation split; writes
        BUNDLE/models/thresholds.json (or OUT), which predict then uses.

        Args:
            datalist: datalist JSON(s), comma-separated, whose "name" is a head (default: train.json's datasets).
            config: extra configs merged over inference.json (and train.json), comma-separated.
            split: the datalist split to calibrate on.
        """
        from cxrfx.predict import calibrate_bundle

        join = lambda v: ",".join(v) if isinstance(v, (builtins.list, tuple)) else v  # noqa: E731 (fire tuples)
        path, results = calibrate_bundle(bundle, datalists=join(datalist) or None, configs=join(config), split=split,
                                         out=out or None, device=device or None, **overrides)
        for head, labels in results.items():
            for label, r in labels.items():
                extra = f"J={r.j:.3f} sens={r.sensitivity:.3f} spec={r.specificity:.3f}" if r.status == "ok" else ""
                print(f"{head:16s} {label:20s} threshold={r.threshold:.4f} {r.status:14s} "
                      f"pos={r.n_positive} neg={r.n_negative} {extra}".rstrip())
        print(f"thresholds written to {path}")

    def package(self, bundle: str, out: str, weights: str = "", schema: str = "", overwrite: bool = False,
                large_files_url: str = ""):
        """Check BUNDLE and write OUT/<zoo_name>_v<version>.zip for the MONAI Model Zoo (docs/model_zoo.md).

        Args:
            weights: the trained model.pt; files over 25 MB go beside the archive and into large_files.yml.
            schema: metadata schema file (default: the copy of meta_schema_20240725.json shipped in cxrfx).
            overwrite: replace an existing archive of the same version (only for a build never released).
            large_files_url: where the large files will be uploaded (their URLs in large_files.yml).
        """
        from cxrfx.packaging import package_bundle

        result = package_bundle(bundle, out, weights=weights or None, schema=schema or None, overwrite=overwrite,
                                large_files_url=large_files_url or None)
        checks = ", ".join(f"{k} {v:.0f} s" for k, v in result.check_seconds.items())
        print(f"{result.archive}: {result.size_bytes / 1e6:.2f} MB, {len(result.files)} files, "
              f"{len(result.vendored_modules)} cxrfx modules vendored; checks passed ({checks})")
        for entry in result.large_files:
            print(f"large file {entry['path']}: upload {result.large_files_dir}/{result.name}_v{result.version}_"
                  f"{entry['path'].rsplit('/', 1)[-1]} to {entry['url']}")

    def install(self, archive: str, dest: str, overwrite: bool = False):
        """Unpack a bundle ARCHIVE into DEST/<zoo_name> after checking every entry (no paths outside DEST,
        no symlinks)."""
        from cxrfx.packaging import install_bundle

        print(install_bundle(archive, dest, overwrite=overwrite))

    def convert(self, checkpoint: str, out: str = "", bundle: str = "", overwrite: bool = False,
                allow_pickle: bool = False, **options):
        """Turn your copy of the published weights (--from foundation_x or ark) into a bundle's models/model.pt.

        Usage: convert --from foundation_x|ark CHECKPOINT [OUT] [--bundle DIR]. OUT: the file to write, or the
        bundle folder (then OUT/models/model.pt); the bundle is --bundle, else OUT or the one OUT lies in
        (<bundle>/models/model.pt). Prints the load report; a file that is not such a checkpoint is refused in one
        line, exit 1. The weights stay under their authors' non-commercial licence: do not redistribute them.
        """
        from cxrfx.convert import convert_checkpoint
        from cxrfx.errors import CheckpointError

        source = options.pop("from", None) or options.pop("source", None)
        if options or not source:
            raise CXRFXError(f"convert takes --from foundation_x|ark CHECKPOINT [OUT] [--bundle DIR] (unknown options "
                             f"{sorted(options)})" if options else "convert needs --from foundation_x|ark")
        try:
            result = convert_checkpoint(checkpoint, str(source), out=out, bundle=bundle, overwrite=overwrite,
                                        allow_pickle=allow_pickle)
        except CheckpointError as exc:  # not a checkpoint, or another source's: one line, exit 1
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            sys.exit(1)
        print(result.report)
        for warning in result.warnings:  # e.g. a setting the bundle's configs must take to compute the source's model
            print(f"warning: {result.out} in {result.bundle}: {warning}", file=sys.stderr)
        print(f"{result.out}: {result.tensors} tensors of {result.bundle}'s network_def (load with its "
              f"CheckpointLoader); licence: the weights' authors' (non-commercial), not for redistribution")


def main(argv: list[str] | None = None) -> None:
    import logging

    import fire

    # MONAI logs this on every import on machines without a GPU codec; it concerns nothing cxrfx does.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

    try:
        fire.Fire(CLI, command=argv, name="cxrfx")
    except CXRFXError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
