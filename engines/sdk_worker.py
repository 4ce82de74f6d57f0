#!/usr/bin/env python3
"""A Python SDK worker for Beam's PROCESS environment: what Beam's container ``boot`` does, minus Docker.

Spark and Flink start one per task slot, each for its own runner process, so
workers of different executors never share a pool (Beam's Python worker pool
keys its workers by id, and executors in separate JVMs number theirs alike).
Pipeline options reach the worker over the Fn API, as with the worker pool.

Usage (the runner calls it; ``python`` first on PATH must have the job's packages)::

    --environment_type=PROCESS --environment_config='{"command": "/abs/path/engines/sdk_worker.py"}'
"""

from __future__ import annotations

import argparse

import grpc
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
from apache_beam.runners.worker.sdk_worker import SdkHarness


def _control_endpoint(provision_endpoint: str, worker_id: str) -> str:
    """Where the runner's Fn API control service listens: the runner says so only through provisioning."""
    with grpc.insecure_channel(provision_endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        response = stub.GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", worker_id)], timeout=60
        )
    return response.info.control_endpoint.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--id", required=True)
    parser.add_argument("--provision_endpoint", required=True)
    args, _ = parser.parse_known_args()  # logging and artifact endpoints: the worker pool's workers ignore them too
    SdkHarness(_control_endpoint(args.provision_endpoint, args.id), worker_id=args.id).run()


if __name__ == "__main__":
    main()
