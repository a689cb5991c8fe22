"""Reference trainer for ``actfocus_kernels``: multi-turn agentic RL (GRPO / PPO, with or without
ActFocus token weights) on text FrozenLake and Sokoban, small enough to run on a laptop CPU.

Entry point: ``python -m actfocus_trainer train|compare|diagnose``; the library API it consumes is
``token_stats``, ``actfocus_weights`` and ``policy_loss``.
"""
