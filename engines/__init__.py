"""Inference: the engine contract, the registry, one module per modality.

Nothing heavy is imported here; import submodules where they are used.
"""
