"""``python -m actfocus_trainer``: check the trainer's extra dependencies, then run the CLI."""
try:
    import matplotlib  # noqa: F401
    import tqdm  # noqa: F401
except ImportError as missing:
    raise SystemExit(f"{missing}: the trainer needs its extras: pip install -e '.[trainer]'") from None

from .cli import main

main()
