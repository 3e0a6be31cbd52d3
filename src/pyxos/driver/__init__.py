"""The one Ready driver, shared by the server and the simulator (docs/architecture.md,
*The core's contract*)."""

from pyxos.driver.ready import DriverCounters, Effects, ReadyDriver

__all__ = ["DriverCounters", "Effects", "ReadyDriver"]
