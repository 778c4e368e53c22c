"""A real S3 API server for tests: moto's threaded server on 127.0.0.1, on a free port.

    with s3_server() as s3:
        os.environ.update(s3.env)        # the driver, and Ray workers started after this
        ...  "s3://" + s3.bucket + "/runs"

Needs `moto[server]` (a dev extra). The server keeps everything in memory; it goes away on exit.
"""

from __future__ import annotations

import logging
import os
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    @contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Make the server check credentials (it accepts anything by default): the test keys in
        `env` belong to no IAM user, so every request is refused until the block ends."""
        self._set_auth_free_requests("0")
        try:
            yield
        finally:
            self._set_auth_free_requests("inf")

    def _set_auth_free_requests(self, count: str) -> None:
        # moto's own control API; the count is process-wide in moto, so this is for one test at a time
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(),
                                         method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


@contextmanager
def s3_server(bucket: str | None = None) -> Iterator[S3Server]:
    """Start the server, create `bucket` (default: a fresh name) and yield an S3Server whose
    `env` points AWS clients (boto3, pyarrow, raydl.storage) at it. Stops the server at exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.INFO if os.environ.get("S3_DEBUG") else logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_ENDPOINT_URL": endpoint,
               "AWS_EC2_METADATA_DISABLED": "true"}
        bucket = bucket or f"raydl-test-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                     aws_access_key_id="testing", aws_secret_access_key="testing",
                     ).create_bucket(Bucket=bucket)
        yield S3Server(endpoint=endpoint, bucket=bucket, env=env)
    finally:
        server.stop()
