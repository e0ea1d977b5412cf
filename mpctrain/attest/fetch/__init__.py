"""Collateral fetcher: AMD KDS, Intel PCS and NVIDIA RIM/OCSP into the cache the verifiers read offline."""

from mpctrain.attest.fetch.client import HttpClient, Response, check_url
from mpctrain.attest.fetch.errors import (
    BadResponse,
    FetchError,
    HttpStatusError,
    InsecureUrl,
    NetworkError,
    NotFound,
    ResponseTooLarge,
)
from mpctrain.attest.fetch.fetcher import CollateralFetcher, Endpoints, FetchResult, fetch_collateral
from mpctrain.attest.fetch.ratelimit import RateLimiter
from mpctrain.attest.fetch.store import MANIFEST, CacheStore

__all__ = [
    "MANIFEST",
    "BadResponse",
    "CacheStore",
    "CollateralFetcher",
    "Endpoints",
    "FetchError",
    "FetchResult",
    "HttpClient",
    "HttpStatusError",
    "InsecureUrl",
    "NetworkError",
    "NotFound",
    "RateLimiter",
    "Response",
    "ResponseTooLarge",
    "check_url",
    "fetch_collateral",
]
