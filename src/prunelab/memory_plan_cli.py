"""``python -m prunelab.memory_plan_cli <overrides>``: a run's memory plan from its config alone
(:mod:`prunelab.memory_plan`'s estimate as :func:`prunelab.plan.make_plan` checks it), or why the
plan is refused (exit 2). No weights load. A module of its own so that the estimator does not
import the plan that uses it."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """The run's memory plan, or why it is refused (exit 2)."""
    import logging

    from prunelab.checks import ConfigError
    from prunelab.config import compose
    from prunelab.plan import make_plan

    logging.basicConfig(level=logging.WARNING)
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        run_plan = make_plan(compose(*overrides))
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    print(run_plan.memory.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
