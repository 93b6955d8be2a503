"""`python -m throttle.simulator` is `throttle simulator`."""

from throttle.cli_hubspot import simulator

if __name__ == "__main__":
    simulator(prog_name="throttle simulator")
