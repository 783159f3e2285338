"""The closed loop, the controller application's job: start at
:class:`~controller.loop.closed_loop.ClosedLoop` (one iteration step by step), whose decisions are
:mod:`~controller.loop.decisions` and whose network and sandbox are the interfaces of
:mod:`~controller.loop.network`; :mod:`~controller.loop.emulated` runs it on Mininet and
:mod:`~controller.loop.report` writes what happened."""
