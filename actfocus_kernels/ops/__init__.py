"""Every ``torch.library`` op in namespace ``actfocus`` (the ops users and ``torch.compile`` see).

Importing the package registers them all, one style throughout (``registry.define_op``): schema,
implementation routed to a concrete backend ("reference", "triton", "cpu", "cuda") by
``routing.row_kernels``, fake, and autograd. The C++ kernels of namespace ``actfocus_native``
(and their fakes) are loaded by ``actfocus_kernels.native``.
"""
from . import actfocus_weights, linear, policy_loss, row_gradient, token_stats
from .policy_loss import InplaceGradPolicyLoss
from .token_stats import InplaceGradTokenStats

__all__ = ["InplaceGradPolicyLoss", "InplaceGradTokenStats", "actfocus_weights", "linear", "policy_loss",
           "row_gradient", "token_stats"]
