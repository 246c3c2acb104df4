"""Self-supervised pretraining from unlabelled radiographs (issue 21): Models Genesis distortions, DiRA, and the
``ssl`` step of the Lock-Release cycle. Nothing in ``cxrfx.data`` or ``cxrfx.networks`` imports this package."""
