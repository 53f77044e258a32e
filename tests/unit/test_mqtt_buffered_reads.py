"""The read buffer under paho: small reads served from one large read, never blocking, EOF kept."""

from __future__ import annotations

import socket

import pytest

from router.sources.mqtt_socket import BufferedReads, buffered_bytes


def test_small_reads_come_from_one_read_and_never_block() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reads = BufferedReads(ours)
    theirs.sendall(b"\x30\x05hello\x30\x02ok")
    assert reads.recv(1) == b"\x30"
    assert buffered_bytes(reads) == 10  # the rest arrived with the first read
    assert reads.recv(1) == b"\x05"
    assert reads.recv(5) == b"hello"
    assert reads.recv(1) == b"\x30"
    assert reads.recv(10) == b"\x02ok"  # fewer than asked: what a socket would answer
    assert buffered_bytes(reads) == 0
    with pytest.raises(BlockingIOError):  # empty: the real socket answers, and has nothing
        reads.recv(1)
    assert reads.fileno() == ours.fileno()  # everything else is the real socket's
    theirs.close()
    assert reads.recv(1) == b""  # EOF reaches paho as EOF
    ours.close()
