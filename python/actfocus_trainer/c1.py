"""C1, the Action Bottleneck claim, measured as stated: do the token statistics that track the
spread of outcomes of a prompt's rollouts sit on the action tokens?

On ``prompts`` start states with ``group_size`` rollouts each (prompt ``g``, rollout returns
``R_{g,1..n}``), the prompt's reward variance is ``v_g = mean_i (R_{g,i} - mean_i R_{g,i})^2``.
For each token class ``c`` (action = the action text of the answer; reasoning = every other
generated token, tags included) and statistic ``s``, ``x_{g,c,s}`` is the mean of ``s`` over the
class's tokens in the prompt's rollouts. The statistics:

- ``energy`` ``-T logsumexp(z / T)`` and ``entropy`` of the next-token distribution, each from the
  rollout policy (``policy``) and from a frozen reference copy (``reference``), via ``token_stats``;
- ``grad_unit``: ``‖dL/dz_t‖`` of the on-policy loss with a unit advantage (``A = 1``; the
  token-mean loss times the token count), i.e. ``‖softmax(z_t) - onehot(y_t)‖``: the policy-gradient
  signal a token would carry per unit of advantage. (A centred advantage ``A_i = R_i - mean R``
  scales every token of rollout ``i`` by ``|A_i|``, so its correlation with ``v_g`` is near
  automatic for any class; it is deliberately not measured.)

Across the prompts with ``v_g > 0``: Pearson and Spearman correlations of ``x_{g,c,s}`` with
``v_g``, percentile-bootstrap 95% intervals over prompts and two-sided permutation p-values
(``stats``). Prompts with ``v_g = 0`` carry no GRPO signal: they are counted and their mean
statistics reported apart, never mixed into the correlations.

Concentration: a token position is (turn ``k``, class, index of the token within its class in
that turn), so position ``(2, action, 0)`` is the first action token of the third turn in every
rollout. For each position seen in at least ``min_prompts`` spread prompts, ``r_p`` is the
Pearson correlation across those prompts of the position's mean statistic with ``v_g``. Reported:
the share of action positions among the ``top_k`` positions by ``|r_p|``, against their share of
all positions and the action share of all tokens, and the mean and 95% range of that top-k share
when ``v`` is permuted across prompts (the null; positions of one class move together, so the
null range can be wide).

Signal share: the share of ``sum_t grad_unit_t`` on action tokens, without and with ActFocus
weights (``source="old"``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from actfocus_kernels import PolicyLossConfig, actfocus_weights, policy_loss, token_stats

from .masks import build_batch, policy_forward
from .stats import bootstrap_ci, pearson, permutation_p, spearman

CLASSES = ("action", "reasoning")
CONCENTRATION_STATISTICS = ("energy_policy", "grad_unit")


@dataclass(frozen=True)
class C1Config:
    """The measurement's size and resampling (every resampling seeded by ``seed``)."""

    prompts: int = 64
    group_size: int = 8
    top_k: int = 10
    min_prompts: int = 16
    resamples: int = 1000
    permutations: int = 1000
    seed: int = 0


@dataclass
class Correlation:
    """One (class, statistic) against reward variance over the spread prompts."""

    pearson: float
    pearson_ci: tuple[float, float]
    pearson_p: float
    spearman: float
    spearman_ci: tuple[float, float]
    spearman_p: float


@dataclass
class Concentration:
    """Action positions among the top-k positions by |correlation| vs their base shares."""

    positions: int
    top_k: int
    action_share_top_k: float
    action_share_positions: float
    null_top_k_mean: float
    null_top_k_range: tuple[float, float]


@dataclass
class C1Report:
    episodes: int
    success: float
    spread_prompts: int
    zero_variance_prompts: int
    action_token_share: float
    signal_share_action: dict[str, float]
    correlations: dict[str, dict[str, Correlation]]
    means_spread: dict[str, dict[str, float]]
    means_zero_variance: dict[str, dict[str, float]]
    concentration: dict[str, Concentration] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenTable:
    """One row per generated token: its rollout's prompt, position key, class and statistics."""

    prompt: np.ndarray
    key: list[tuple[int, str, int]]
    is_action: np.ndarray
    values: dict[str, np.ndarray]


def unit_gradient_norms(policy, batch, context: str, weights=None, backend: str = "auto") -> torch.Tensor:
    """``‖dL/dz_t‖ [B, L]`` of the on-policy token-mean loss with ``A = 1``, times the token count."""
    with torch.no_grad():
        logits, _ = policy_forward(policy, batch, context)
    logits.requires_grad_(True)
    ones = torch.ones(len(batch.loss_mask), device=logits.device)
    out = policy_loss(logits, batch.targets, None, ones, batch.loss_mask, weights=weights,
                      action_mask=batch.action_mask, cfg=PolicyLossConfig(agg="token-mean"), backend=backend)
    out.loss.backward()
    return logits.grad.norm(dim=-1) * batch.loss_mask * batch.loss_mask.sum()


def token_table(episodes, tensors: dict[str, torch.Tensor]) -> TokenTable:
    """Gather the ``[B, L]`` statistics at every generated token (the predicting position of
    response token ``i`` of a turn is the turn's response start plus ``i - 1``)."""
    prompt, keys, is_action, index = [], [], [], []
    for row, episode in enumerate(episodes):
        pos = 0
        for turn_index, turn in enumerate(episode.turns):
            pos += len(turn.prompt)
            start, end = turn.action_span or (0, 0)
            counts = {"action": 0, "reasoning": 0}
            for i in range(len(turn.response)):
                cls = "action" if start <= i < end else "reasoning"
                keys.append((turn_index, cls, counts[cls]))
                counts[cls] += 1
                prompt.append(episode.group)
                is_action.append(cls == "action")
                index.append((row, pos + i - 1))
            pos += len(turn.response)
    rows, cols = (torch.tensor(axis) for axis in zip(*index))
    values = {name: tensor[rows, cols].double().cpu().numpy() for name, tensor in tensors.items()}
    return TokenTable(np.array(prompt), keys, np.array(is_action), values)


def class_means(table: TokenTable, prompts: int) -> dict[str, dict[str, np.ndarray]]:
    """``means[class][statistic][g]``: the statistic's mean over the class's tokens of prompt ``g``
    (NaN where the prompt has none)."""
    means = {}
    for cls in CLASSES:
        member = table.is_action if cls == "action" else ~table.is_action
        count = np.bincount(table.prompt[member], minlength=prompts).astype(float)
        means[cls] = {name: np.bincount(table.prompt[member], values[member], minlength=prompts)
                      / np.where(count > 0, count, np.nan)
                      for name, values in table.values.items()}
    return means


def correlation(x: np.ndarray, v: np.ndarray, cfg: C1Config) -> Correlation:
    keep = np.isfinite(x)
    x, v = x[keep], v[keep]
    return Correlation(pearson(x, v), bootstrap_ci(x, v, pearson, cfg.resamples, cfg.seed),
                       permutation_p(x, v, pearson, cfg.permutations, cfg.seed),
                       spearman(x, v), bootstrap_ci(x, v, spearman, cfg.resamples, cfg.seed),
                       permutation_p(x, v, spearman, cfg.permutations, cfg.seed))


def position_correlations(x: np.ndarray, present: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pearson correlation per row of ``x [P, G]`` with ``v [G]`` over the columns ``present``
    (rows x columns permutations at once: ``v`` may be ``[R, G]``, giving ``[R, P]``)."""
    v = np.atleast_2d(v)[:, None, :]                     # [R, 1, G]
    m = present[None].astype(float)                      # [1, P, G]
    n = m.sum(-1)
    mx = (x[None] * m).sum(-1) / n
    mv = (v * m).sum(-1) / n
    dx, dv = (x[None] - mx[..., None]) * m, (v - mv[..., None]) * m
    denominator = np.sqrt((dx * dx).sum(-1) * (dv * dv).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (dx * dv).sum(-1) / denominator, 0.0)


def concentration(table: TokenTable, statistic: str, v: np.ndarray, spread: np.ndarray,
                  cfg: C1Config) -> Concentration:
    """The top-k concentration of ``statistic`` (see the module docstring)."""
    keys = sorted(set(table.key))
    key_index = {key: i for i, key in enumerate(keys)}
    position = np.array([key_index[key] for key in table.key])
    shape = (len(keys), len(v))
    sums, counts = np.zeros(shape), np.zeros(shape)
    np.add.at(sums, (position, table.prompt), table.values[statistic])
    np.add.at(counts, (position, table.prompt), 1.0)
    present = (counts > 0) & spread[None]
    kept = present.sum(1) >= cfg.min_prompts
    x = np.where(present, sums / np.maximum(counts, 1), 0.0)[kept]
    present = present[kept]
    action = np.array([key[1] == "action" for key in keys])[kept]
    if len(x) == 0:
        return Concentration(0, 0, float("nan"), float("nan"), float("nan"), (float("nan"), float("nan")))
    k = min(cfg.top_k, len(x))

    def top_share(r: np.ndarray) -> np.ndarray:
        top = np.argsort(-np.abs(r), axis=-1, kind="stable")[..., :k]
        return action[top].mean(-1)

    observed = float(top_share(position_correlations(x, present, v))[0])
    rng = np.random.default_rng(cfg.seed)
    shuffled = np.stack([rng.permutation(v) for _ in range(min(cfg.permutations, 200))])
    null = top_share(position_correlations(x, present, shuffled))
    return Concentration(len(x), k, observed, float(action.mean()), float(null.mean()),
                         (float(np.percentile(null, 2.5)), float(np.percentile(null, 97.5))))


def measure_c1(policy, reference, tokenizer, episodes, context: str, actfocus_cfg,
               cfg: C1Config, backend: str = "auto") -> C1Report:
    """The C1 report (module docstring) on ``episodes`` (``cfg.prompts`` groups of
    ``cfg.group_size`` rollouts, sampled from ``policy``); ``reference`` is a frozen model."""
    device = next(policy.parameters()).device
    batch = build_batch(episodes, tokenizer.pad_id).to(device)
    tensors = {}
    with torch.no_grad():
        for name, model in (("policy", policy), ("reference", reference)):
            logits, _ = policy_forward(model, batch, context)
            stats = token_stats(logits, batch.targets, backend=backend)
            tensors[f"energy_{name}"], tensors[f"entropy_{name}"] = stats.energy, stats.entropy
            if name == "policy":
                weights = actfocus_weights(stats, batch.loss_mask, batch.action_mask, actfocus_cfg,
                                           turn_ids=batch.turn_ids)
            del logits
    tensors["grad_unit"] = unit_gradient_norms(policy, batch, context, backend=backend)
    weighted = unit_gradient_norms(policy, batch, context, weights, backend)
    action = batch.action_mask * batch.loss_mask
    signal_share = {"vanilla": float((tensors["grad_unit"] * action).sum() / tensors["grad_unit"].sum()),
                    "actfocus": float((weighted * action).sum() / weighted.sum())}

    groups = np.array([ep.group for ep in episodes])
    returns = np.array([ep.total_return for ep in episodes])
    success = float(np.mean([ep.success for ep in episodes]))
    return analyse(token_table(episodes, tensors), groups, returns, cfg, success, signal_share)


def nan_mean(x: np.ndarray) -> float:
    """The mean of the finite entries (NaN when there are none)."""
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if len(finite) else float("nan")


def analyse(table: TokenTable, groups: np.ndarray, returns: np.ndarray, cfg: C1Config,
            success: float = float("nan"), signal_share: dict | None = None) -> C1Report:
    """The report's statistics from the token table and each rollout's prompt and return."""
    prompts = int(groups.max()) + 1
    v = np.array([returns[groups == g].var() for g in range(prompts)])
    spread = v > 1e-12
    means = class_means(table, prompts)
    statistics = list(table.values)
    return C1Report(
        episodes=len(returns), success=success,
        spread_prompts=int(spread.sum()), zero_variance_prompts=int((~spread).sum()),
        action_token_share=float(table.is_action.mean()), signal_share_action=signal_share or {},
        correlations={cls: {name: correlation(means[cls][name][spread], v[spread], cfg) for name in statistics}
                      for cls in CLASSES},
        means_spread={cls: {name: nan_mean(means[cls][name][spread]) for name in statistics} for cls in CLASSES},
        means_zero_variance={cls: {name: nan_mean(means[cls][name][~spread]) for name in statistics}
                             for cls in CLASSES},
        concentration={name: concentration(table, name, v, spread, cfg)
                       for name in CONCENTRATION_STATISTICS if name in table.values})


def format_c1(report: dict) -> str:
    """A Markdown table of a C1 report (as ``to_dict`` gives it)."""
    share = report["signal_share_action"]
    lines = [f"{report['episodes']} rollouts, success {100 * report['success']:.1f}%, prompts with reward "
             f"spread {report['spread_prompts']} (zero variance, set apart: {report['zero_variance_prompts']}); "
             f"action tokens {100 * report['action_token_share']:.1f}% of generated tokens; share of the "
             f"unit-advantage gradient on them: {100 * share.get('vanilla', float('nan')):.1f}% vanilla, "
             f"{100 * share.get('actfocus', float('nan')):.1f}% ActFocus",
             "",
             "| class | statistic | Pearson [95% CI] | p | Spearman [95% CI] | p | mean (spread / zero-var prompts) |",
             "|---|---|---|---|---|---|---|"]
    for cls, rows in report["correlations"].items():
        for name, c in rows.items():
            lines.append(
                f"| {cls} | {name} | {c['pearson']:+.2f} [{c['pearson_ci'][0]:+.2f}, {c['pearson_ci'][1]:+.2f}] | "
                f"{c['pearson_p']:.3f} | {c['spearman']:+.2f} [{c['spearman_ci'][0]:+.2f}, "
                f"{c['spearman_ci'][1]:+.2f}] | {c['spearman_p']:.3f} | {report['means_spread'][cls][name]:.3g} / "
                f"{report['means_zero_variance'][cls][name]:.3g} |")
    lines += ["", "| statistic | positions | action share of top-k by abs(r) | null: mean, 95% range "
              "| action share of positions |", "|---|---|---|---|---|"]
    for name, c in report["concentration"].items():
        lines.append(f"| {name} | {c['positions']} | {100 * c['action_share_top_k']:.0f}% (k={c['top_k']}) | "
                     f"{100 * c['null_top_k_mean']:.0f}%, {100 * c['null_top_k_range'][0]:.0f}-"
                     f"{100 * c['null_top_k_range'][1]:.0f}% | "
                     f"{100 * c['action_share_positions']:.0f}% |")
    return "\n".join(lines)
