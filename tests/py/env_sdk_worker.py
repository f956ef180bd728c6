"""Runs the official `anthropic` SDK's EnvironmentWorker against a queue (Airlock's reference queue in the tests).

Usage: env_sdk_worker.py BASE_URL ENVIRONMENT_ID WORKDIR MAX_IDLE_SECONDS
The environment key comes from ANTHROPIC_ENVIRONMENT_KEY (never argv). The worker runs with the SDK's default
toolset (`agent_toolset_20260401`: bash, read, write, edit, glob, grep) until the process is terminated.
Prints one line `ready <sdk version>` once the worker is constructed.
"""

import asyncio
import logging
import os
import sys

import anthropic
from anthropic import AsyncAnthropic
from anthropic.lib.environments import EnvironmentWorker


async def main() -> None:
    base_url, environment_id, workdir, max_idle = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    key = os.environ.pop("ANTHROPIC_ENVIRONMENT_KEY")
    # The orchestrating side's API key is not needed (and must not be on a worker host); the SDK client
    # still wants a value, and the worker replaces it with the environment key on every call.
    client = AsyncAnthropic(api_key="unused-by-the-worker", base_url=base_url, max_retries=0)
    worker = EnvironmentWorker(
        client,
        environment_id=environment_id,
        environment_key=key,
        workdir=workdir,
        max_idle=max_idle,
        memory_sync_interval=None,
        worker_id="sdk-conformance",
    )
    print(f"ready {anthropic.__version__}", flush=True)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main())
