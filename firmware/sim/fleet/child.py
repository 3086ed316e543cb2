"""One process of ``yizhan sim fleet --processes N`` (firmware/sim/fleet/shards.py
starts it): its arguments, the parent's with its shard, as one JSON line on stdin."""

from __future__ import annotations

import argparse
import json
import sys

from firmware.sim.fleet.run import run


def main() -> int:
    return run(argparse.Namespace(**json.loads(sys.stdin.readline())))


if __name__ == "__main__":
    sys.exit(main())
