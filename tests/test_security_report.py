"""Issue 13: what ``doctor --json`` shows in its ``security`` section (safepool._security_checks).
The forced forkserver cases are in test_forkserver_guard.py."""
import json
import os

import pytest

from safepool._security_checks import security_report


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
def test_security_report_on_this_machine(clean_process):
    report = security_report()
    json.dumps(report)
    fs, inherit = report["forkserver"], report["exec_inheritance"]
    assert (fs["id"], fs["status"], fs["case"]) == ("forkserver_socket", "OK", "fixed"), fs
    assert fs["running"]["socket_mode"] == "0o600" and not fs["running"]["abstract"], fs
    assert inherit["inherited"] == {}, inherit
    assert (inherit["id"], inherit["status"]) == ("exec_inheritance", "OK"), inherit


def test_security_report_without_starting_anything():
    report = security_report(start=False)
    assert set(report) == {"forkserver"}
    assert report["forkserver"]["status"] in ("OK", "WARN", "FAIL")
