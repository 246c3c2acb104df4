"""cxrfx: Foundation X for MONAI — chest X-ray multi-task pretraining, fine-tuning and inference.

Data flows one way: ``cxrfx.io`` (pixels + meta) -> ``cxrfx.data`` (datalists, transforms, phantom)
-> networks -> engines -> metrics / outputs. Lower layers never import higher ones.
"""

__version__ = "0.1.0"
