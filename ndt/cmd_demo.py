"""``ndt demo``: the README's main job, the closed loop on Abilene in live emulation (a few minutes, root).

SNDlib Abilene with its demand matrix, scaled so the busiest link runs at 90 % under shortest
paths, in Mininet with the ndt controller; one loop iteration (see ``ndt loop``). Prints what
happened and where to look in a few lines; ``--json`` gives ``measured: {before, after}``,
``twin_vs_emulation_mape``, ``loop_s`` and the rest of the report.
"""

from __future__ import annotations

from ndt.cmd_loop import add_loop_arguments, run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: the closed loop on Abilene in Mininet (controller, twin, NES, validation); needs root",
        description=(
            "Run the whole loop once on SNDlib Abilene under heavy load: live Mininet network with the ndt "
            "controller, telemetry, NES + twin, sandbox validation of the top candidates, push through gRPC, "
            "measurement after, rollback if worse. Writes data/loop/report.json and report.png."
        ),
    )
    add_loop_arguments(p, load=0.9, duration=10.0, validate_s=8.0, verify_s=30.0)
    p.set_defaults(handler=run)
