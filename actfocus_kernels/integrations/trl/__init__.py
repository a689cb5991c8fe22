"""TRL drop-in (SPEC section 9): ``ActFocusGRPOConfig`` and ``ActFocusGRPOTrainer``.

``ActFocusGRPOTrainer`` is a ``trl.GRPOTrainer`` whose loss is ``actfocus_kernels.linear_policy_loss``
on the model's last hidden states and LM head (the logits are never materialised, as in TRL 1.16's
own fused LM head). Every TRL loss option it covers maps to a ``PolicyLossConfig`` plus token
weights, so that with ActFocus off its loss and gradients equal stock TRL's; an option it does not
cover is a ``ValueError`` at construction. docs/integrations.md has the full table.

With ``actfocus_enabled=True`` the action mask comes from the span rule over each decoded completion
(``integrations.spans``) and the ActFocus weights from the rollout policy's statistics when TRL
computes old log-probs (the trainer then computes that pass itself, returning the same log-probs plus
energies), else from the current ones (``ActFocusConfig(source="current")``).

The modules, one job each:

- ``options``: ``ActFocusGRPOConfig``, ``check_trl_options`` and ``trl_loss_plan`` (TRL option ->
  ``PolicyLossConfig``, the mapping in its docstring);
- ``model``: ``add_hidden_states_forward`` (the model patch) and ``head_call`` (the LM head under ZeRO-3);
- ``trainer``: ``ActFocusGRPOTrainer`` (TRL's hooks and the loss assembly);
- ``metrics``: the metrics stock TRL logs, and the ActFocus ones.
"""
from .metrics import log_actfocus_metrics, log_trl_metrics
from .model import add_hidden_states_forward, head_call
from .options import (
                      IGNORE_INDEX,
                      LOSS_TYPES,
                      PPO_LOSS_TYPES,
                      ActFocusGRPOConfig,
                      LossPlan,
                      check_trl_options,
                      trl_loss_plan,
)
from .trainer import ActFocusGRPOTrainer

__all__ = ["ActFocusGRPOConfig", "ActFocusGRPOTrainer", "IGNORE_INDEX", "LOSS_TYPES", "LossPlan", "PPO_LOSS_TYPES",
           "add_hidden_states_forward", "check_trl_options", "head_call", "log_actfocus_metrics",
           "log_trl_metrics", "trl_loss_plan"]
