"""Submit a job by POSTing its JSON manifest to a URL.

The request carries the job's idempotency key in an ``Idempotency-Key``
header, so a receiver can recognise a retry.  Any 2xx answer means
submitted; anything else, or no answer within the timeout, is a failure.
"""

import urllib.error
import urllib.request

from processors.base import Submission, SubmitError


class WebhookSubmitter:
    name = "webhook"

    def __init__(self, url: str, timeout_seconds: float) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds

    def submit(self, submission: Submission) -> None:
        request = urllib.request.Request(
            self.url,
            data=submission.manifest.read_bytes(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": submission.job.idempotency_key,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            raise SubmitError(f"{self.url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SubmitError(f"{self.url} did not answer: {exc}") from None
        if not 200 <= status < 300:
            raise SubmitError(f"{self.url} answered HTTP {status}")
