"""Who may call /v1/*: the `--api-key`, OAuth2 bearer JWTs checked against a JSON Web Key Set
(`--jwt-jwks`, `--jwt-issuer`, `--jwt-audience`), or either one when both are configured.

A JWT is accepted when the key its header's `kid` names in the set signed it with RS256 or ES256,
it has not expired (`exp` is required; 30 s of leeway for clock skew) and it carries the configured
`iss` and `aud`. Asymmetric algorithms only: "none" and HS* are refused whatever the set holds (a
key set is public, so an HMAC secret taken from it would be anyone's).

A refused request gets 401 with a message the client can act on ("the bearer token has expired");
why exactly (PyJWT's own message) goes to the log under the request id. A key set URL that cannot
be fetched is the server's problem, not the client's: 503. A key set file is read once, at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from pathlib import Path
from urllib.parse import urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWK, PyJWKClient, PyJWKClientConnectionError, PyJWTError

from runtime.errors import RuntimeUserError
from runtime.gateway.errors import APIError, request_id_of

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
LEEWAY_S = 30  # clock skew tolerated on exp / nbf / iat
JWKS_LIFESPAN_S = 300  # a fetched key set is reused this long; an unknown kid refetches (30 s apart)
JWKS_TIMEOUT_S = 10
LOOPBACK = ("localhost", "127.0.0.1", "::1")
PUBLIC_KEYS = (RSAPublicKey, EllipticCurvePublicKey)

ALGORITHM_REFUSED = f"the bearer token's algorithm is not accepted; use {' or '.join(ALGORITHMS)}"
REASONS = (  # PyJWT's error -> what the client is told
    (jwt.ExpiredSignatureError, "the bearer token has expired"),
    (jwt.ImmatureSignatureError, "the bearer token is not valid yet (its nbf or iat is in the future)"),
    (jwt.InvalidAudienceError, "the bearer token's audience is not accepted"),
    (jwt.InvalidIssuerError, "the bearer token's issuer is not accepted"),
    (jwt.InvalidAlgorithmError, ALGORITHM_REFUSED),
)


class TokenRefused(Exception):
    """A request's credentials cannot be accepted: `message` is for the client, `detail` for the log."""

    def __init__(self, message: str, detail: str = "", status: int = 401, code: str | None = "invalid_token"):
        super().__init__(message)
        self.message, self.detail, self.status, self.code = message, detail, status, code


class KeySet:
    """Public keys by `kid`, read once from a JWKS file."""

    blocking = False

    def __init__(self, keys: dict[str, PyJWK]) -> None:
        self.keys = keys

    def get(self, kid: str) -> PyJWK | None:
        return self.keys.get(kid)

    @classmethod
    def from_file(cls, path: Path) -> KeySet:
        where = f"--jwt-jwks {path}"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RuntimeUserError(
                f"{where}: no such file; pass your identity provider's JSON Web Key Set as a file "
                "or as its https:// URL (often https://ISSUER/.well-known/jwks.json)"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise RuntimeUserError(
                f"{where}: cannot read it ({reason}); check the path and its permissions"
            ) from None
        except json.JSONDecodeError as error:
            raise RuntimeUserError(
                f'{where}: not JSON ({error}); a key set looks like {{"keys": [{{"kty": "RSA", "kid": ...}}]}}'
            ) from None
        return cls(usable_keys(data, where))


class RemoteKeySet:
    """Public keys by `kid`, fetched from a JWKS URL by PyJWKClient, which caches the set."""

    blocking = True  # a fetch is blocking I/O: called off the event loop

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = PyJWKClient(url, lifespan=JWKS_LIFESPAN_S, timeout=JWKS_TIMEOUT_S)

    def get(self, kid: str) -> PyJWK | None:
        try:
            self.client.get_signing_keys()  # the set itself (cached): unreachable, not JSON, no keys
        except PyJWTError as error:
            raise _unavailable(self.url, error) from None
        try:
            key = self.client.get_signing_key(kid)  # an unknown kid refetches the set, 30 s apart
        except PyJWKClientConnectionError as error:
            raise _unavailable(self.url, error) from None
        except PyJWTError:
            return None  # the set is fine; it has no such kid
        return key if isinstance(key.key, PUBLIC_KEYS) else None  # not a private or HMAC key

    @classmethod
    def from_url(cls, url: str) -> RemoteKeySet:
        try:
            host = urlparse(url).hostname
        except ValueError:  # e.g. an unclosed [IPv6 literal
            host = None
        if not host or (url.startswith("http://") and host not in LOOPBACK):
            raise RuntimeUserError(
                f"--jwt-jwks {url}: give an https:// URL (plain http only from this machine: "
                f"{', '.join(LOOPBACK)}), since a key set fetched over http can be forged on the way; "
                "or download it and pass the file"
            )
        return cls(url)


def _unavailable(url: str, error: Exception) -> TokenRefused:
    return TokenRefused(
        "cannot check bearer tokens right now: the key set is unavailable",
        detail=f"JWKS {url}: {error}",
        status=503,
        code=None,
    )


def usable_keys(data: object, where: str) -> dict[str, PyJWK]:
    """The RS256 / ES256 public keys of a JWKS document, by kid; others are skipped with a warning."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise RuntimeUserError(f'{where}: not a JSON Web Key Set; expected an object {{"keys": [...]}}')
    keys: dict[str, PyJWK] = {}
    skipped = []
    for i, jwk_data in enumerate(data["keys"]):
        kid = jwk_data.get("kid") if isinstance(jwk_data, dict) else None
        name = f"key {i}" + (f" (kid {kid!r})" if kid else "")
        if isinstance(jwk_data, dict) and "d" in jwk_data:
            raise RuntimeUserError(
                f"{where}: {name} is a private key; a key set holds only public keys "
                "(publish the key without its private members d, p, q, dp, dq, qi)"
            )
        reason = _unusable(jwk_data, keys)
        if reason:
            skipped.append(f"{name}: {reason}")
        else:
            keys[kid] = PyJWK(jwk_data)
    if not keys:
        raise RuntimeUserError(
            f"{where}: no usable key ({'; '.join(skipped) or 'the set is empty'}); this server checks "
            "RS256 (RSA, 2048 bits or more) and ES256 (EC P-256) signatures, by each key's 'kid'"
        )
    for line in skipped:
        log.warning("%s: skipped %s", where, line)
    return keys


def _unusable(jwk_data: object, seen: dict[str, PyJWK]) -> str | None:
    if not isinstance(jwk_data, dict):
        return "not a JSON object"
    kid = jwk_data.get("kid")
    if not isinstance(kid, str) or not kid:
        return "no 'kid' (tokens pick their key by kid)"
    if kid in seen:
        return "its kid is used by an earlier key"
    if jwk_data.get("use", "sig") != "sig":
        return f"use {jwk_data['use']!r}, not 'sig'"
    try:
        key = PyJWK(jwk_data)
    except PyJWTError as error:
        return str(error)
    if key.algorithm_name not in ALGORITHMS:
        return f"algorithm {key.algorithm_name}; accepted: {', '.join(ALGORITHMS)}"
    return key.Algorithm.check_key_length(key.key)  # None when long enough


class JWTVerifier:
    """Checks a bearer JWT: signature (by the key its kid names), expiry, issuer and audience."""

    def __init__(self, keys: KeySet | RemoteKeySet, issuer: str, audience: str) -> None:
        self.keys, self.issuer, self.audience = keys, issuer, audience

    def verify(self, token: str) -> dict:
        """The token's claims, or TokenRefused."""
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError as error:
            raise TokenRefused("invalid bearer token", detail=f"not a JWT: {error}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:  # "none" and HS* never reach a key
            raise TokenRefused(ALGORITHM_REFUSED, detail=f"alg {str(alg)[:40]!r}")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("the bearer token's header names no signing key (kid)")
        key = self.keys.get(kid)
        if key is None:
            raise TokenRefused(
                "the bearer token is signed with a key this server does not know",
                detail=f"kid {kid[:80]!r} is not in the key set",
            )
        if key.algorithm_name != alg:  # e.g. RS256 claimed for an EC key
            raise TokenRefused(
                "invalid bearer token", detail=f"alg {alg} for {key.algorithm_name} key {kid[:80]!r}"
            )
        try:
            return jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.MissingRequiredClaimError as error:
            raise TokenRefused(f"the bearer token has no {error.claim!r} claim") from None
        except PyJWTError as error:
            message = next((m for kind, m in REASONS if isinstance(error, kind)), "invalid bearer token")
            raise TokenRefused(message, detail=f"kid {kid[:80]!r}: {type(error).__name__}: {error}") from None


def jwt_verifier(jwks: str | None, issuer: str | None, audience: str | None) -> JWTVerifier | None:
    """The verifier `serve --jwt-*` asks for (None without --jwt-jwks); its key set file is read now."""
    if not jwks:
        if issuer or audience:
            flag = "--jwt-issuer" if issuer else "--jwt-audience"
            raise RuntimeUserError(
                f"{flag} needs --jwt-jwks: the JSON Web Key Set (file or https:// URL) whose keys "
                "sign the tokens to accept"
            )
        return None
    if not issuer or not audience:
        raise RuntimeUserError(
            "--jwt-jwks needs --jwt-issuer and --jwt-audience: without them any token those keys "
            "signed, for any application, would be let in (pass your identity provider's issuer "
            "URL and the audience it puts in tokens for this API)"
        )
    is_url = jwks.startswith(("http://", "https://"))
    keys = RemoteKeySet.from_url(jwks) if is_url else KeySet.from_file(Path(jwks))
    return JWTVerifier(keys, issuer, audience)


class Access:
    """Who may call /v1/*: a JWT the verifier accepts, or the API key when there is one."""

    def __init__(self, api_key: str | None, verifier: JWTVerifier) -> None:
        self.api_key, self.verifier = api_key, verifier
        self.blocking = verifier.keys.blocking

    def check(self, authorization: str) -> None:
        """Pass, or TokenRefused. `authorization` is the Authorization header ('' when absent)."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenRefused("missing bearer token; send 'Authorization: Bearer <token>'")
        if self.api_key is not None and secrets.compare_digest(token.encode(), self.api_key.encode()):
            return
        self.verifier.verify(token)


class BearerAuth:
    """ASGI glue: /v1/* requests pass `Access.check` first. Added inside guard.Guard, so a refusal
    gets Guard's request id, its error body (401 with WWW-Authenticate) and its metrics."""

    def __init__(self, app, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
            try:
                if self.access.blocking:
                    await asyncio.to_thread(self.access.check, header)
                else:
                    self.access.check(header)
            except TokenRefused as refused:
                rid = request_id_of(scope)
                log.warning("request %s: refused: %s (%s)", rid, refused.message, refused.detail or "-")
                raise APIError(refused.status, refused.message, code=refused.code) from None
        await self.app(scope, receive, send)
