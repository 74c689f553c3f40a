"""Schemathesis hooks for .ci/schemathesis.sh (loaded through `hooks` in schemathesis.toml).

Three adjustments, all made to a request just before it is sent (schemathesis re-checks
afterwards whether the request is still schema-valid, so its checks judge what was sent):

* Long-polls stay short. `POST /v1/queues/{queue}/claim`, `POST /v1/agents/{agent}/receive` (body `wait_ms`),
  `GET /v1/events` and `GET /v1/items/{id}` (query `wait_ms`) wait up to `wait_ms` (<= 30,000) when nothing is there,
  which on a fuzzed, mostly empty server is nearly always. A valid wait above WAIT_CAP_MS is
  lowered to WAIT_CAP_MS: still a valid long-poll that really waits and times out, but 20 ms
  instead of up to 30 s (dozens of them per run). Values outside 0..=30000, and values of the
  wrong type, are sent unchanged, so their rejection is still tested.
* The CI's own admin token survives. `DELETE /v1/tokens/{id}` with the id of the token the
  harness authenticates with (FERRY_CI_TOKEN_ID; ids show up in `GET /v1/tokens`, which the
  stateful phase and response-based data generation read) would revoke it and turn every
  later request into 401. Such a request is sent for a random id instead (a valid 404 case).
* Dependencies exist. A job's `depends_on` must name jobs that exist (else 422), which no
  schema can say: a generated UUID names none, so every valid job with a dependency would be
  "rejected". In the jobs of `POST /v1/jobs` and `POST /v1/import`, each well-formed UUID in
  `depends_on` is replaced by FERRY_CI_JOB_ID, a job the script enqueued before fuzzing (the
  list keeps its length; anything that is not a UUID is sent unchanged, so its rejection is
  still tested).
* Payers exist. A paid job's `payment.from` must name a ledger account (else 422) and its
  `ledger` must be the server's `[ledger] jobs_ledger` (1), neither of which a schema can say.
  In `POST /v1/jobs`, a well-formed `from` becomes `schemathesis-payer` (funded by the script)
  and an integer `ledger` within range becomes 1. An import takes no payment (422 by design,
  tested elsewhere): `payment` is dropped from the jobs of `POST /v1/import`.
"""

import os
import re
import uuid

import schemathesis

WAIT_CAP_MS = 20
MAX_WAIT_MS = 30_000
LONG_POLLS = {
    ("POST", "/v1/queues/{queue}/claim"),
    ("GET", "/v1/events"),
    ("GET", "/v1/items/{id}"),
    ("POST", "/v1/agents/{agent}/receive"),
}
CI_TOKEN_ID = os.environ.get("FERRY_CI_TOKEN_ID", "").strip().lower()
CI_JOB_ID = os.environ.get("FERRY_CI_JOB_ID", "").strip().lower()
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _existing_dependencies(job):
    """Points the UUIDs of a job's `depends_on` at the job the harness made."""
    if not CI_JOB_ID or not isinstance(job, dict) or not isinstance(job.get("depends_on"), list):
        return
    job["depends_on"] = [
        CI_JOB_ID if isinstance(d, str) and UUID.match(d) else d for d in job["depends_on"]
    ]


LEDGER_ID = re.compile(r"^[A-Za-z0-9._:%-]{1,512}$")


def _existing_payer(key, job):
    """Points a paid job at the funded account, in the jobs' ledger; drops an import's payment."""
    if not isinstance(job, dict) or not isinstance(job.get("payment"), dict):
        return
    if key == ("POST", "/v1/import"):
        del job["payment"]
        return
    pay = job["payment"]
    frm = pay.get("from")
    if isinstance(frm, str) and LEDGER_ID.match(frm) and frm != "escrow" and not frm.startswith("worker:"):
        pay["from"] = "schemathesis-payer"
    ledger = pay.get("ledger")
    whole = isinstance(ledger, int) or (isinstance(ledger, float) and ledger.is_integer())
    if whole and not isinstance(ledger, bool) and 1 <= ledger <= 4_294_967_295:
        pay["ledger"] = 1


def _jobs_of(key, body):
    """The job objects in a body of POST /v1/jobs or POST /v1/import."""
    if not isinstance(body, dict):
        return []
    if key == ("POST", "/v1/jobs"):
        batch = body.get("jobs")
        return batch if isinstance(batch, list) else [body]
    items = body.get("jobs")
    if not isinstance(items, list):
        return []
    return [item.get("job") for item in items if isinstance(item, dict)]


def _capped(value):
    """The wait to send instead of `value`, or None to send it unchanged."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        # JSON's 21066.0 is the integer 21066 to the server (serde_json reads it as a u64).
        n = int(value)
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        n = int(value)
    else:
        return None
    if WAIT_CAP_MS < n <= MAX_WAIT_MS:
        if isinstance(value, float):
            return float(WAIT_CAP_MS)
        return WAIT_CAP_MS if isinstance(value, int) else str(WAIT_CAP_MS)
    return None


@schemathesis.hook
def before_call(context, case, kwargs):
    op = case.operation
    key = (op.method.upper(), op.path)
    if key in LONG_POLLS:
        if isinstance(case.query, dict) and "wait_ms" in case.query:
            new = _capped(case.query["wait_ms"])
            if new is not None:
                case.query["wait_ms"] = new
        if isinstance(case.body, dict) and "wait_ms" in case.body:
            new = _capped(case.body["wait_ms"])
            if new is not None:
                case.body["wait_ms"] = new
    if key in {("POST", "/v1/jobs"), ("POST", "/v1/import")}:
        for job in _jobs_of(key, case.body):
            _existing_dependencies(job)
            _existing_payer(key, job)
    if key == ("DELETE", "/v1/tokens/{id}") and CI_TOKEN_ID and isinstance(case.path_parameters, dict):
        if str(case.path_parameters.get("id", "")).strip().lower() == CI_TOKEN_ID:
            case.path_parameters["id"] = str(uuid.uuid4())
