"""moto_server whose conditional PUTs are atomic, as S3's are, and can be made to race.

    python -m tests.atomic_s3_server -H 127.0.0.1 -p PORT

S3 applies a PUT with `If-None-Match: *` atomically: of two racing for one key, one is stored
and the other refused (412). moto checks the condition, then stores, on each request's thread,
so two racing PUTs could both pass the check and the second replace the first; here PUTs run
one at a time, which is all that atomicity needs, so what the tests of concurrent Delta commits
test is featureplane's and the engines' handling of the race, not moto's.

Two variables make races testable: `S3_COMMIT_DELAY_SECONDS` holds every Delta commit PUT
(a `_delta_log/*.json` key) that long before it is applied, so that writers who read the same
table version commit into each other; `S3_REFUSALS_LOG` names a file that gets the key of
every conditional PUT refused.
"""

from __future__ import annotations

import os
import threading
import time

from moto.s3.exceptions import PreconditionFailed
from moto.s3.responses import S3Response
from moto.server import main

_put = S3Response.put_object
_one_at_a_time = threading.Lock()
DELAY = float(os.environ.get("S3_COMMIT_DELAY_SECONDS", "0"))
REFUSALS = os.environ.get("S3_REFUSALS_LOG")


def put_object(self: S3Response):
    if DELAY and "/_delta_log/" in self.path and self.path.endswith(".json"):
        time.sleep(DELAY)
    with _one_at_a_time:
        try:
            return _put(self)
        except PreconditionFailed:
            if REFUSALS:
                with open(REFUSALS, "a") as log:
                    log.write(f"{self.path}\n")
            raise


S3Response.put_object = put_object

if __name__ == "__main__":
    main()
