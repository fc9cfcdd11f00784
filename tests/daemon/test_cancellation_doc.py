"""docs/CANCELLATION.md lists every public action with the modes its policy really allows."""

from __future__ import annotations

from pathlib import Path

from daemon.commands import public_actions

DOC = Path(__file__).resolve().parents[2] / "docs" / "CANCELLATION.md"


def test_every_action_is_in_the_matrix_with_its_modes() -> None:
    rows = {
        cells[1]: cells
        for line in DOC.read_text().splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.split("|")]) > 6
    }
    for name, cls in public_actions().items():
        policy = cls.spec.policy
        assert name in rows, f"{name} missing from docs/CANCELLATION.md"
        modes = {m.strip() for m in rows[name][3].split(",")} - {"—"}  # — : no mode at all
        assert modes == {m.value for m in policy.modes}, name
        assert rows[name][5] == policy.point_of_no_return, name
