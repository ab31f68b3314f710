"""The worker's inbox without a worker process: task numbers, revokes that cross tasks on
their way, and STARTED/REVOKED never both for one task. Real pipes, in this process."""
import os

import pytest

from safepool import _protocol as P
from safepool._channel import Channel
from safepool._worker import _Inbox


class _Task:
    def __init__(self, task_id, payload=b"x"):
        self.id = task_id
        self.payload = payload
        self.number = -1


@pytest.fixture
def pair():
    """A parent Channel and a worker _Inbox joined by real pipes."""
    task_r, task_w = os.pipe()
    result_r, result_w = os.pipe()
    control_r, control_w = os.pipe()
    os.set_blocking(result_r, False)
    channel = Channel(task_w, result_r, control_w)
    inbox = _Inbox(task_r, result_w, control_r)
    yield channel, inbox
    inbox.reader.close()
    for fd in (task_r, task_w, result_r, result_w, control_r, control_w):
        try:
            os.close(fd)
        except OSError:
            pass


def said(channel):
    """What the worker wrote so far, as (kind, task id or ids)."""
    messages = []
    channel.read(messages)
    return [(kind, P.unpack_ids(payload) if kind == P.REVOKED else task_id)
            for kind, task_id, _, payload in messages]


def revoke(inbox, tasks):
    inbox._revoke([(t.number, t.id) for t in tasks])


def test_tasks_are_numbered_in_frames_at_both_ends(pair):
    channel, inbox = pair
    tasks = [_Task(10), _Task(11), _Task(12)]
    channel.write_tasks(tasks[:2])
    channel.write_tasks(tasks[2:])
    assert [t.number for t in tasks] == [0, 1, 2]
    assert inbox.next_task(None)[0] == 10
    assert inbox.received == 2  # one message read: the worker is busy now
    assert inbox.next_task((P.RESULT, 10, b"", 0))[0] == 11
    assert inbox.next_task((P.RESULT, 11, b"", 0))[0] == 12
    assert inbox.received == 3
    assert said(channel) == [(P.STARTED, 10), (P.RESULT, 10), (P.STARTED, 11),
                             (P.RESULT, 11), (P.STARTED, 12)]


def test_a_task_revoked_before_it_was_read_is_dropped_when_it_arrives(pair):
    channel, inbox = pair
    first, behind = _Task(1), _Task(2)
    channel.write_tasks([first])
    assert inbox.next_task(None)[0] == 1  # running: the next task stays in the pipe
    channel.write_tasks([behind])
    revoke(inbox, [behind])  # the control thread answers at once, without reading it
    channel.write_stop()
    assert inbox.next_task((P.RESULT, 1, b"", 0)) is None  # read, dropped, then STOP
    assert said(channel) == [(P.STARTED, 1), (P.REVOKED, [2]), (P.RESULT, 1)]
    assert inbox.drop == set()


def test_a_task_resent_after_a_revoke_runs_once_under_its_new_number(pair):
    channel, inbox = pair
    first, task = _Task(1), _Task(2)
    channel.write_tasks([first])
    assert inbox.next_task(None)[0] == 1
    channel.write_tasks([task])
    revoke(inbox, [task])
    channel.write_tasks([task])  # sent again (as to another worker): number 2 now
    assert task.number == 2
    channel.write_stop()
    assert inbox.next_task((P.RESULT, 1, b"", 0))[0] == 2
    assert inbox.next_task((P.RESULT, 2, b"", 0)) is None
    assert said(channel) == [(P.STARTED, 1), (P.REVOKED, [2]), (P.RESULT, 1), (P.STARTED, 2),
                             (P.RESULT, 2)]


def test_a_queued_task_is_taken_back_and_a_started_one_is_not(pair):
    channel, inbox = pair
    tasks = [_Task(1), _Task(2), _Task(3)]
    channel.write_tasks(tasks)  # one message: all three are read together
    assert inbox.next_task(None)[0] == 1
    revoke(inbox, tasks)  # 1 has started: only 2 and 3 come back
    channel.write_stop()
    assert inbox.next_task((P.RESULT, 1, b"", 0)) is None
    assert said(channel) == [(P.STARTED, 1), (P.REVOKED, [2, 3]), (P.RESULT, 1)]


def test_end_of_file_runs_what_is_queued_then_stops(pair):
    channel, inbox = pair
    channel.write_tasks([_Task(1), _Task(2)])
    os.close(channel.tasks.fd)  # the parent went away
    assert inbox.next_task(None)[0] == 1
    assert inbox.next_task((P.RESULT, 1, b"", 0))[0] == 2
    assert inbox.next_task((P.RESULT, 2, b"", 0)) is None
    assert inbox.closed


def test_a_task_asked_back_twice_before_it_is_read_is_given_back_once(pair):
    channel, inbox = pair
    first, behind = _Task(1), _Task(2)
    channel.write_tasks([first])
    assert inbox.next_task(None)[0] == 1
    channel.write_tasks([behind])
    revoke(inbox, [behind])
    revoke(inbox, [behind])
    assert said(channel) == [(P.STARTED, 1), (P.REVOKED, [2]), (P.REVOKED, [])]
