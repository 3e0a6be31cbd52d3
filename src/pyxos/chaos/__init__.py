"""``pyxos chaos``: real node processes under a nemesis, and the verdict on their history."""

from pyxos.chaos.run import ChaosOptions, ChaosReport, replay_command, run_chaos

__all__ = ["ChaosOptions", "ChaosReport", "replay_command", "run_chaos"]
