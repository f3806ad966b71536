"""Online feature serving over a registry and an online store: the one dispatch behind the
Lambda handler, the local HTTP server and `FeatureStore.get_online_features`.

Routes (`FeatureServer.respond(method, path, body, headers)`):
- `GET /health` → `{"status": "ok", "registry_format": 1, "feature_services": 2, "auth": "on",
  "registry_signatures": "required"}`
- `GET /v1/feature-services` → `{"feature_services": [{"name", "description", "owner", "tags",
  "join_keys": [{"name", "type"}], "request_data": [{"name", "type"}], "features": [...]}]}`
- `POST /v1/feature-services/{name}/get-features` with
  `{"entities": {"user_id": 1, "ad_id": 7}, "request_data": {...}, "features": [...]}`
- `POST /v1/feature-services/{name}/get-features-batch` with `{"entities": [{...}, ...], ...}`
  (one object per row, at most `Limits.max_batch_rows`).
- `GET /openapi.json` → the OpenAPI 3.1 document of these routes for the loaded registry
  (`serving.openapi`): each service's request and response schemas, and every status.

`entities` must hold exactly the service's join keys, of their declared types (an Int64 key
takes a JSON integer, not `"12"` nor `true`; bodies are parsed with 64-bit integers, and a
larger one reads as a float, which no integer key accepts); `features` optionally picks a subset
of the service's features, served in its order, with the same join keys and request data as the
whole service; `request_data` holds exactly the request fields of the service's on-demand views
(timestamps and dates as ISO 8601 text), and may be left out when the features asked for need
none: one object, or in a batch one for every row or a list of one per row. On-demand features
are computed from the fields of the view's own request source and the features it reads, by the
function the registry ships; they are `present`, with no event time or age. A function that
fails on the request's values gives 422.

Features are named `<view>__<feature>`, as in training data, so a name is unique across the
views of a service. Response (both routes; one result per feature, in the order of the
response's `features` (the service's, or the request's subset), each a column over the entity
rows in request order, as Feast's feature server answers):

    {"service": "ctr", "features": ["ad_delivery__impressions_7d", ...],
     "results": [{"values": [12, 0, ...],
                  "status": ["present" | "missing" | "expired", ...],
                  "event_timestamps": ["2026-10-03T10:00:00+00:00" | null, ...],
                  "age_seconds": [5400.0 | null, ...]}, ...],
     "metadata": {"served_at": "...", "feature_versions": {view: version}}}

`online.client.by_feature` turns a response into one mapping per row, keyed by feature.
Bodies are strict JSON: a NaN or infinite value is sent as null (its status says present).

Status: `missing` when the store has no record (no data for the entity, or an offline-only
view); `expired` when a row-level view has a ttl and the record is older than it (value null,
time and age still reported); `present` otherwise. Aggregations are finalized from the record's
tiles at request time for the current time; an entity without a record is `missing` with the
value of an empty window (counts 0, others null), which is what training data holds for it. The
event time of aggregates is the end of their latest tile.

Errors are `{"error": message}`: 400 for malformed JSON, a key twice in one object (orjson
would keep the last), missing, extra or mistyped join keys, unknown features or too many rows;
404 for an unknown route or service; 405 for a wrong method; 413 for a body over
`Limits.max_body_bytes`; 503 when the store stays throttled. The HTTP server also answers
408 and 431 for slow or oversized requests (`online.protocol`).

"""

from featureplane.serving.request import Limits, RequestError
from featureplane.serving.responses import Response, encode_json, internal_error
from featureplane.serving.server import FeatureServer, clock_from_env

__all__ = [
    "FeatureServer",
    "Limits",
    "RequestError",
    "Response",
    "clock_from_env",
    "encode_json",
    "internal_error",
]
