"""What a host flooding broadcast frames costs the controller, with and without the switches'
packet-in meter: two switches in Mininet (the controller tests' testbed), h1 sends FRAMES broadcast
frames of an experimental EtherType in bursts of 100 every 20 ms, once per RATE given
(``--packet-in-rate``; 0: no meter). Prints per rate what the switch took in, what reached the
controller, what the meter dropped, the controller's CPU time (s) and whether pings still pass. Root,
with Open vSwitch running (as after ``make test`` or ``make demo``).

    python experiments/packet_in_meter.py RATE [RATE ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from mininet.clean import cleanup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.probe_accuracy import controller_cpu_s  # noqa: E402
from tests.integration.test_controller_mininet import (  # noqa: E402
    Emulation,
    broadcast_flood,
    host_port_rx_packets,
    wait_for,
)

FRAMES = 20000


def main(rates: list[str]) -> None:
    for rate in rates:
        cleanup()
        bed = Emulation(Path(tempfile.mkdtemp()), 2, [(1, 2)], controller_args=("--packet-in-rate", rate))
        try:
            if float(rate) > 0:
                wait_for(lambda: "s1: packet-in meter at" in bed.log_text(), 10, "s1's packet-in meter")
            bed.ping(1, 2, 3, 0.05)
            before, cpu_before = host_port_rx_packets("s1"), controller_cpu_s(bed.controller.pid)
            started = time.monotonic()
            bed.net.get("h1").cmd(broadcast_flood("h1-eth0", FRAMES))
            took = time.monotonic() - started
            time.sleep(3.0)  # the controller works through its queue; the statistics come in
            taken = host_port_rx_packets("s1") - before
            reached = (bed.metric("ndt_frames_flooded_total") or 0) + (bed.metric("ndt_frames_not_flooded_total") or 0)
            print(f"--packet-in-rate {rate}: the switch took in {taken} frames in {took:.1f} s; "
                  f"{reached:.0f} reached the controller; the meter dropped "
                  f"{bed.metric('ndt_packet_in_meter_dropped_total', switch='s1') or 0:.0f}; controller CPU "
                  f"{(controller_cpu_s(bed.controller.pid) - cpu_before):.2f} s; pings after (sent, received): "
                  f"{bed.ping(1, 2, 3, 0.05)}", flush=True)
        finally:
            bed.stop()
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
