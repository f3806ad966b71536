"""Access: principals with API keys, the policies of the feature repository that say who may
read which feature services and who may apply, and the door that checks every request.

Spark-, Dagster- and boto3-free: the Lambda handler imports it.
"""

from featureplane.access.gate import AccessDenied, Gate, PolicySpec
from featureplane.access.policy import ALL_SERVICES, AccessPolicy
from featureplane.access.principals import Principal, Principals

__all__ = [
    "ALL_SERVICES",
    "AccessDenied",
    "AccessPolicy",
    "Gate",
    "PolicySpec",
    "Principal",
    "Principals",
]
