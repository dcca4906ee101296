"""The suite's own scheduling: under ``--dist loadgroup`` (``make test``) every test marked
``xdist_group`` is sent to one test process with the rest of its group, which pytest-xdist
does by appending ``@group`` to the test's node id. When it does not (pytest 9.2 with
xdist 3.8, pytest-xdist#1386), nothing fails by itself: groups are split over the processes,
module fixtures run once per process, and tests that scan for Ray's processes see each
other's. This test makes that visible."""

from __future__ import annotations

import pytest


def test_grouped_tests_carry_their_group_in_their_node_id(request) -> None:
    if not getattr(request.config.option, "loadgroup", False):  # set in each xdist process
        pytest.skip("not under --dist loadgroup")
    grouped = [i for i in request.session.items if i.get_closest_marker("xdist_group")]
    if not grouped:
        pytest.skip("no grouped test was collected")
    for item in grouped:
        name = item.get_closest_marker("xdist_group").args[0]
        assert item.nodeid.endswith(f"@{name}"), item.nodeid
