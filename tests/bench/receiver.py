"""make bench's webhook receiver, in a process of its own so that its work is not the clients':
`python -m tests.bench.receiver DELAY_S` prints its URL, then answers every POST 200 after
DELAY_S seconds until killed."""

from __future__ import annotations

import asyncio
import sys

from tests.api.receiver import Receiver


async def serve(delay_s: float) -> None:
    receiver = await Receiver(lambda n: (200, delay_s), keep=False).start()
    print(receiver.url, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(float(sys.argv[1])))
