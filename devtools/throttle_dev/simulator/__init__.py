"""A HubSpot stand-in that follows shared/hubspot-contract.md harshly: tests, demo, benchmarks.

sim = Simulator(SimulatorConfig(access_token_ttl_s=60))
app = create_simulator_app(simulator=sim)          # aiohttp app; admin API under /_sim
async with Driver(sim, action_url) as driver:      # signed workflow executions
    await driver.run(TrafficPlan(executions=1000, portals=[1, 2]))
print(format_report(build_report(sim)))
"""

from throttle_dev.simulator.driver import Driver, DriveResult, TrafficPlan, send_uninstall
from throttle_dev.simulator.portal_report import SimReport, build_report, format_report
from throttle_dev.simulator.server import SIMULATOR, create_simulator_app
from throttle_dev.simulator.state import Faults, Simulator, SimulatorConfig

__all__ = [
    "SIMULATOR",
    "DriveResult",
    "Driver",
    "Faults",
    "SimReport",
    "Simulator",
    "SimulatorConfig",
    "TrafficPlan",
    "build_report",
    "create_simulator_app",
    "format_report",
    "send_uninstall",
]
