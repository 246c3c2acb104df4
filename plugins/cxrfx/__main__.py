"""``python -m cxrfx``: the command line (built with fire).

Commands: ``phantom`` (build the embedded dataset), ``validate`` (check datalists and their files),
``demo`` (what ``make demo`` runs). Errors that cxrfx raises on purpose print as one line, exit code 2.
"""

from __future__ import annotations

import sys

from cxrfx.errors import CXRFXError


class CLI:
    """cxrfx: Foundation X for MONAI."""

    def phantom(self, out: str, count: int = 64, size: int = 256, seed: int = 0, overwrite: bool = False):
        """Build the phantom datasets (phantom_cls, phantom_det, phantom_seg) under OUT.

        Args:
            out: output folder; each dataset gets OUT/<name>/datalist.json.
            count: images per dataset (70/15/15 train/validation/test).
            size: image width in pixels (height is 7/8 of it).
            seed: random seed; the same seed gives the same files.
            overwrite: rebuild even if OUT holds a phantom with the same parameters.
        """
        from cxrfx.data.phantom.writer import generate_phantom

        summary = generate_phantom(out, count=count, size=size, seed=seed, overwrite=overwrite)
        for name, info in summary["datasets"].items():
            print(f"{out}/{info['datalist']}: {info['splits']}")
        print(f"phantom built in {summary['seconds']:.1f} s")

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

    def demo(self, out: str = "runs/demo", count: int = 64, size: int = 256, seed: int = 0, train: bool = True,
             epochs: int | None = None):
        """The main job on the phantom: build and validate it, pretrain Foundation X (bundles/foundation_x, demo
        override), evaluate student and teacher on the test split, run inference, write overlays and a summary.

        Args:
            train: False stops after the data part (phantom, validation, overlays).
            epochs: override the demo's number of training cycles.
        """
        from cxrfx.demo import run_demo

        run_demo(out, count=count, size=size, seed=seed, train=train, epochs=epochs)


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
