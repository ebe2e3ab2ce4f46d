"""`python tests/dist/slow_rank.py [harness-train arguments]`: harness.train's main with rank 1 slowed
down on purpose (each forward step sleeps SLEEP_S first), for the straggler test."""

import os
import sys
import time

from harness.train.__main__ import main
from harness.train.step import StepRunner

SLEEP_S = 2.0


def slow_down() -> None:
    forward_step = StepRunner.forward_step

    def slow_forward_step(self, data_iterator, model):
        time.sleep(SLEEP_S)
        return forward_step(self, data_iterator, model)

    StepRunner.forward_step = slow_forward_step


if __name__ == "__main__":          # the checkpoint writer's helper processes import this file too
    if os.environ.get("RANK") == "1":
        slow_down()
    sys.exit(main(sys.argv[1:]))
