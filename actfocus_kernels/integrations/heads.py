"""What a model family does to its LM head's logits, read from its config the way Hugging Face's models
apply it in their forward (and TRL 1.16's ``add_fused_lm_head`` reads it), so that a fused path that
never materialises the logits computes the same ones: ``softcap tanh(logit_scale z / softcap)``, or
``logit_scale z`` without a cap (SPEC section 10, applied inside the kernels).

- ``logit_scale`` (Cohere), else ``output_multiplier``, else ``lm_head_multiplier`` (Falcon-H1), else
  ``1 / logits_scaling`` (Granite; HyperCLOVA X multiplies by its ``logits_scaling``): the scale;
- ``final_logit_softcapping`` (Gemma 2 / 3): the cap.
Torch-free: the TRL and OpenRLHF drop-ins both read it.
"""
from __future__ import annotations

from typing import Optional


def logit_transform(text_config) -> tuple[float, Optional[float]]:
    """``(logit_scale, softcap)`` of the logits of a model with this (text) config; ``(1.0, None)``:
    untransformed."""
    scale = getattr(text_config, "logit_scale", None)
    for name in ("output_multiplier", "lm_head_multiplier"):
        scale = getattr(text_config, name, None) if scale is None else scale
    scaling = getattr(text_config, "logits_scaling", None)
    if scale is None and scaling is not None:
        scale = scaling if text_config.model_type == "hyperclovax" else 1 / scaling
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return 1.0 if scale is None else float(scale), None if softcap is None else float(softcap)
