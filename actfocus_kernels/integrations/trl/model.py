"""Model patching for the TRL drop-in: the logits' transform of the model family, a forward that returns the
backbone's last hidden states in place of TRL's fused log-probs (the LM head is applied inside
``linear_policy_loss``, so the logits are never materialised, as in TRL 1.16's own fused LM head).

The hidden states travel through TRL's own ``_get_per_token_logps_and_entropies`` (its multimodal
inputs, its chunking, its ``[:, -logits_to_keep:]`` slice: only the completion positions reach the
head), so every model TRL's ``add_fused_lm_head`` serves is served the same way: the backbone looked
up per call (FSDP, PEFT), VLM text configs, the hidden states moved to the head's device
(``device_map``), MoE router logits and TRL's load-balancing loss; under DeepSpeed ZeRO-3 the loss runs as
the LM head module's forward (``head_call``).
"""
from __future__ import annotations

import contextlib
import functools
import types
from typing import Callable, Iterator, TypeVar

import torch
import transformers
from packaging.version import Version
from torch import Tensor
from trl.trainer.utils import FusedCausalLMOutput

from ..heads import logit_transform

T = TypeVar("T")


def head_options(model, cast_lm_head_to_fp32: bool) -> dict:
    """The keyword arguments of the linear losses that make them compute TRL's logits of ``model``:
    ``logit_scale`` and ``softcap`` (``heads.logit_transform``, applied inside the kernels) and
    ``logits_dtype=torch.float32`` with ``cast_lm_head_to_fp32`` (TRL's fp32 GEMM of the head)."""
    scale, softcap = logit_transform(model.config.get_text_config())
    return dict(logit_scale=scale, softcap=softcap, logits_dtype=torch.float32 if cast_lm_head_to_fp32 else None)


def head_call(model, fn: Callable[[Tensor], T], hidden: Tensor) -> T:
    """``fn(hidden)`` (``fn`` returns a tensor or a tuple of tensors, computed from ``hidden`` and the LM head's
    parameters); under DeepSpeed ZeRO-3 run as the LM head module's own forward, ``head(hidden)``, so that
    ZeRO-3's module hooks fire around it: the head, a partition of numel 0 outside its forward, is gathered
    for ``fn``, gathered again for the backward of what ``fn`` returns, and its gradient reduced to the
    partitions (TRL gathers it with ``maybe_gather_lm_head_ctx`` in a forward of its own instead).

    Args:
        model: the (unwrapped) causal LM.
        fn: the computation on the head; hidden: its input (the module's, so that ZeRO-3 releases the
            gathered head after the backward has passed through it).
    """
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return fn(hidden)
    head = model.get_output_embeddings()
    shadowed = head.__dict__.get("forward")
    head.forward = fn  # an instance attribute: the module's forward for this call only
    try:
        return head(hidden)
    finally:
        if shadowed is None:
            del head.forward
        else:
            head.forward = shadowed


def router_aux_loss(model, text_config, backbone_outputs, attention_mask):
    """TRL 1.16's MoE load-balancing loss (``add_fused_lm_head``): Mixtral's ``load_balancing_loss_func``
    of the router logits, the experts counted as TRL counts them."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    version = Version(transformers.__version__)
    if version < Version("5.0.0"):
        experts, per_token = model.num_experts, model.num_experts_per_tok
    else:  # gpt_oss's config lacks num_experts before 5.6 (TRL #5754)
        old_gpt_oss = text_config.model_type == "gpt_oss" and version < Version("5.6.0")
        experts = model.num_experts if old_gpt_oss else text_config.num_experts
        per_token = text_config.num_experts_per_tok
    return load_balancing_loss_func(backbone_outputs.router_logits, experts, per_token, attention_mask)


def add_hidden_states_forward(model) -> None:
    """Patch ``model.forward`` (already patched by TRL's ``add_fused_lm_head``): inside
    ``hidden_states_mode(model)``, a ``fused_lm_head=True`` call returns a ``FusedCausalLMOutput``
    whose ``log_probs`` holds the backbone's last hidden states ``[B, L - 1, H]`` (position ``t``
    predicts token ``t + 1``, as TRL's log-probs), on the LM head's device, and whose ``aux_loss`` is
    TRL's MoE load-balancing loss when the config asks for router logits; any other call is TRL's.
    Going through ``model.forward`` keeps wrappers (DDP, FSDP2, PEFT) in the call.

    Args:
        model: the (unwrapped) causal LM; patched in place, this instance only.
    """
    inner = model.forward
    text_config = model.config.get_text_config()
    backbone = "base_model"  # before transformers 5, VLMs expose their language backbone as ``model``
    if text_config is not model.config and Version(transformers.__version__) < Version("5.0.0"):
        backbone = "model"
    model._actfocus_hidden_states = False

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not (fused_lm_head and self._actfocus_hidden_states):
            return inner(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                         num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        if getattr(text_config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        outputs = getattr(self, backbone)(*args, **kwargs)
        hidden = outputs.last_hidden_state if shift_labels is not None else outputs.last_hidden_state[:, :-1]
        aux = (router_aux_loss(self, text_config, outputs, kwargs.get("attention_mask"))
               if kwargs.get("output_router_logits") else None)
        return FusedCausalLMOutput(log_probs=hidden.to(self.get_output_embeddings().weight.device), aux_loss=aux)

    model.forward = types.MethodType(forward, model)


@contextlib.contextmanager
def hidden_states_mode(model) -> Iterator[None]:
    """While inside, ``model``'s fused calls return hidden states (``add_hidden_states_forward``)."""
    model._actfocus_hidden_states = True
    try:
        yield
    finally:
        model._actfocus_hidden_states = False
