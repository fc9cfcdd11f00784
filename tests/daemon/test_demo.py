"""The README's main command must keep working: run the demo's script and require every check."""

from __future__ import annotations

import io

from rich.console import Console

from daemon.demo import Demo


async def test_demo_checks_all_hold() -> None:
    out = io.StringIO()
    demo = Demo(Console(file=out, width=120))
    demo.sim.settings.cluster.time_scale = 0.1  # same script, faster clock
    demo.sim.cluster.clock.time_scale = 0.1
    ok = await demo.run()
    failed = [name for name, passed in demo.checks if not passed]
    assert ok, f"demo checks failed: {failed}\n{out.getvalue()}"
    assert len(demo.checks) == 8
    assert "no task left on the SPM" in out.getvalue()
