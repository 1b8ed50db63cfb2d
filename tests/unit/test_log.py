"""Log lines are gathered and written together; a warning or an error is written at once."""

from __future__ import annotations

import io

from payments.platform import log
from payments.platform.log import BufferedLogger


class Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_info_lines_wait_and_a_warning_writes_them_with_it() -> None:
    stream = Stream()
    logger = BufferedLogger(stream)

    logger.info('{"event": "request_finished"}')
    logger.info('{"event": "request_finished", "n": 2}')
    assert stream.getvalue() == ""

    logger.warning('{"event": "redis_unavailable"}')
    assert stream.getvalue().splitlines() == [
        '{"event": "request_finished"}',
        '{"event": "request_finished", "n": 2}',
        '{"event": "redis_unavailable"}',
    ]
    assert stream.writes == 1

    logger.error('{"event": "request_failed"}')
    assert stream.getvalue().endswith('{"event": "request_failed"}\n')


def test_a_full_buffer_is_written_without_waiting() -> None:
    stream = Stream()
    logger = BufferedLogger(stream)
    line = "x" * 1000
    for _ in range(log.BUFFER_CHARS // 1001):
        logger.info(line)
    assert stream.writes == 0
    logger.info(line)
    assert stream.writes == 1
    assert stream.getvalue().count("\n") == log.BUFFER_CHARS // 1001 + 1
