"""Drop-in integrations with the trainers of the ecosystem (SPEC section 9).

- ``actfocus_kernels.integrations.trl``: ``ActFocusGRPOConfig`` and ``ActFocusGRPOTrainer`` for TRL
  (a package: options, model, trainer, metrics).
- ``actfocus_kernels.integrations.verl``: importing it registers the ``actfocus`` policy losses in
  verl's registry and provides a fused log-prob / entropy / energy forward; ``verl_inputs`` checks
  the losses' inputs, ``verl_metrics`` gives verl's metrics.
- ``actfocus_kernels.integrations.openrlhf``: ``ActFocusPolicyLoss`` (OpenRLHF's ``PolicyLoss``) and a fused
  actor forward; it imports with torch alone.
- ``actfocus_kernels.integrations.spans``: the action-span rule (completion text -> action tokens)
  both share.

Nothing here is imported by ``actfocus_kernels`` itself: the peers (``pip install
actfocus_kernels[trl]`` / ``[verl]``) are imported only when one of these modules is.
"""
