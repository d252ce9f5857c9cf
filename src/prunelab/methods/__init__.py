"""Pruning methods, one module each, behind :class:`~prunelab.methods.base.PruningMethod`.

There is no registry: ``conf/method/<name>.yaml`` names its class with ``_target_`` and Hydra
builds it (:func:`prunelab.config.build`), so a method is one module plus one YAML file.
"""
