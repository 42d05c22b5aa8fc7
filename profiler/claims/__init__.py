"""The user's optimization claims (MODEL.md section 7), measured on this machine."""

from profiler.claims.measure import ClaimsConfig, measure_claims
from profiler.claims.spec import CLAIMS, assess

__all__ = ["CLAIMS", "ClaimsConfig", "assess", "measure_claims"]
