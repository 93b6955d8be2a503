"""`python -m throttle.simulator` is `throttle simulator`."""

from throttle.cli import main

if __name__ == "__main__":
    main(["simulator", *__import__("sys").argv[1:]])
