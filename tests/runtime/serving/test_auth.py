"""Production access: OAuth2 bearer JWTs checked against a JSON Web Key Set, HTTPS, and the user
errors of their options.

One real server (tritonserver + gateway) runs with every option at once: a JWKS file of keys made
here, an API key, and a self-signed certificate. A JWKS served over HTTP is checked in-process
(its gateway answers /v1/models without Triton), and the start-up checks are called directly, plus
a few through the CLI to show they fail before anything starts.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from openai import OpenAI

from runtime.errors import RuntimeUserError
from runtime.gateway.app import create_app
from runtime.gateway.auth import KeySet, TokenRefused, jwt_verifier
from runtime.gateway.config import GatewayConfig
from runtime.server.background import start_background_server
from runtime.server.launcher import tls_files
from tests.conftest import run_cli
from tests.runtime.serving.conftest import stop

ISSUER = "https://login.example.test/realms/phone"
AUDIENCE = "autoglm-api"
API_KEY = "ops-key"
# What a 401 body must never carry: paths, tracebacks, PyJWT's own words.
LEAKS = ("/", "Traceback", "Error", "jwt", "Signature verification", "Token is missing", "kid:")


# --- keys, tokens, certificates ---------------------------------------------------------------


class Keys:
    """An RSA and an EC key in the server's set, and an RSA key it has never seen."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict:
        return {"keys": [public_jwk(self.rsa, "rsa-1"), public_jwk(self.ec, "ec-1")]}

    def token(self, key=None, kid: str | None = "rsa-1", alg: str | None = None, **claims) -> str:
        key = key or self.rsa
        alg = alg or ("ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256")
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 600, **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(payload, key, algorithm=alg, headers=headers)


def public_jwk(key, kid: str, **extra) -> dict:
    algorithm = (
        jwt.algorithms.ECAlgorithm
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else jwt.algorithms.RSAAlgorithm
    )
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig", **extra}


def b64(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: dict, claims: dict, secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: alg "none", or HS256 keyed with a public key's PEM."""
    signing_input = f"{b64(header)}.{b64(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret else b""
    return f"{signing_input}.{b64(signature)}"


def valid_claims() -> dict:
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": int(time.time()) + 600}


def self_signed(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its unencrypted key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key_file


def cases(*pairs: tuple[str, str]) -> list:
    """(case, expected words) parameters, each named by its case."""
    return [pytest.param(*pair, id=pair[0]) for pair in pairs]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


# --- the real server: JWKS file + API key + HTTPS -----------------------------------------------


@pytest.fixture(scope="module")
def secure(glm4v_tiny_engines, keys, tmp_path_factory):
    """(server, its growing log, an httpx client that trusts its certificate)."""
    directory = tmp_path_factory.mktemp("secure")
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    cert, key = self_signed(directory)
    server = start_background_server(
        glm4v_tiny_engines,
        API_KEY,
        extra_args=(
            *("--threads", "1", "--jwt-jwks", str(jwks), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE),
            *("--ssl-certfile", str(cert), "--ssl-keyfile", str(key)),
        ),
    )
    log = server.lines  # keeps growing while it runs
    trust = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=trust, timeout=60) as client:
        yield server, log, client, trust
    stop(server)


def get_models(secure, token: str | None = None, header: str | None = None) -> httpx.Response:
    server, _, client, _ = secure
    headers = {"Authorization": header or f"Bearer {token}"} if (token or header) else {}
    return client.get(f"{server.base_url}/models", headers=headers)


def assert_refused(response: httpx.Response, words: str, status: int = 401) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error" and error["param"] is None
    assert words in error["message"], error["message"]
    assert not any(leak in error["message"] for leak in LEAKS), error["message"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-request-id"].startswith("req-")


def test_listens_on_https_only(secure):
    server, _, client, _ = secure
    assert server.base_url.startswith("https://127.0.0.1:")
    assert client.get(f"{server.root}/health").json() == {"status": "ok"}  # open, as without TLS
    assert client.get(f"{server.root}/metrics").status_code == 200
    with pytest.raises(httpx.TransportError):  # the port speaks TLS only
        httpx.get(server.root.replace("https://", "http://") + "/health", timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # a certificate check happens
        httpx.get(f"{server.root}/health", timeout=10)


def test_valid_tokens_and_api_key_are_accepted(secure, keys):
    server, _, client, trust = secure
    with httpx.Client(verify=trust, timeout=60) as http:
        openai = OpenAI(base_url=server.base_url, api_key=keys.token(), max_retries=0, http_client=http)
        completion = openai.completions.create(model=server.model, prompt="Hello", max_tokens=2)
    assert completion.usage.completion_tokens <= 2 and completion.choices[0].finish_reason
    chat = client.post(
        f"{server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {keys.token(keys.ec, kid='ec-1')}"},
        json={"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    )
    assert chat.status_code == 200, chat.text
    assert get_models(secure, API_KEY).status_code == 200  # --api-key as well: either one lets in
    assert get_models(secure, keys.token(aud=["other-api", AUDIENCE])).status_code == 200


@pytest.mark.parametrize(
    ("case", "words"),
    cases(
        ("missing header", "missing bearer token"),
        ("basic auth", "missing bearer token"),
        ("empty bearer", "missing bearer token"),
        ("malformed", "invalid bearer token"),
        ("not json header", "invalid bearer token"),
        ("expired", "the bearer token has expired"),
        ("not yet valid", "not valid yet"),
        ("wrong issuer", "the bearer token's issuer is not accepted"),
        ("wrong audience", "the bearer token's audience is not accepted"),
        ("no exp", "has no 'exp' claim"),
        ("no aud", "has no 'aud' claim"),
        ("wrong key", "invalid bearer token"),
        ("unknown kid", "signed with a key this server does not know"),
        ("no kid", "names no signing key"),
        ("alg none", "algorithm is not accepted"),
        ("HS256 with the public key", "algorithm is not accepted"),
        ("RS256 header on the EC key", "invalid bearer token"),
        ("tampered claims", "invalid bearer token"),
        ("wrong API key", "invalid bearer token"),
    ),
)
def test_bad_credentials_get_401(secure, keys, case, words):
    now = int(time.time())
    pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    good = keys.token()
    header, _, signature = good.split(".")
    tokens = {
        "expired": lambda: keys.token(exp=now - 3600, iat=now - 7200),
        "not yet valid": lambda: keys.token(nbf=now + 3600),
        "wrong issuer": lambda: keys.token(iss="https://evil.example.test"),
        "wrong audience": lambda: keys.token(aud="some-other-api"),
        "no exp": lambda: keys.token(exp=None),
        "no aud": lambda: keys.token(aud=None),
        "wrong key": lambda: keys.token(keys.stranger, kid="rsa-1"),
        "unknown kid": lambda: keys.token(keys.stranger, kid="rsa-2"),
        "no kid": lambda: keys.token(kid=None),
        "alg none": lambda: forged({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, valid_claims(), None),
        "HS256 with the public key": lambda: forged(
            {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, valid_claims(), pem
        ),
        "RS256 header on the EC key": lambda: keys.token(keys.rsa, kid="ec-1"),
        "tampered claims": lambda: f"{header}.{b64({**valid_claims(), 'sub': 'admin'})}.{signature}",
        "malformed": lambda: "not-a-jwt",
        "not json header": lambda: f"{b64(b'nope')}.{b64(valid_claims())}.{signature}",
        "wrong API key": lambda: "ops-key-guess",
    }
    headers = {"basic auth": "Basic dXNlcjpwYXNz", "empty bearer": "Bearer"}
    if case in tokens:
        response = get_models(secure, tokens[case]())
    else:
        response = get_models(secure, header=headers.get(case))
    assert_refused(response, words)


def test_refusals_are_logged_with_details(secure, keys):
    _, log, _, _ = secure
    response = get_models(secure, keys.token(exp=int(time.time()) - 3600))
    rid = response.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(rid in line for line in log):
        time.sleep(0.1)
    line = next(line for line in log if rid in line)
    assert "ExpiredSignatureError" in line and "rsa-1" in line


def test_openai_client_sees_an_authentication_error(secure, keys):
    import openai

    server, _, _, trust = secure
    with httpx.Client(verify=trust, timeout=60) as http:
        client = OpenAI(
            base_url=server.base_url, api_key=keys.token(aud="x"), max_retries=0, http_client=http
        )
        with pytest.raises(openai.AuthenticationError) as caught:
            client.models.list()
    assert caught.value.status_code == 401
    assert caught.value.body["message"] == "the bearer token's audience is not accepted"


# --- a JWKS URL: the gateway in-process, the key set from a local HTTP server --------------------


class JWKSServer:
    """Serves a key set at /jwks.json on loopback; counts fetches; can be made to fail."""

    def __init__(self, body: dict) -> None:
        owner = self
        self.body, self.fetches, self.status = body, 0, 200

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                data = json.dumps(owner.body).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server(keys):
    server = JWKSServer(keys.jwks())
    yield server
    server.close()


def test_jwks_url_in_the_gateway(jwks_server, keys):
    verifier = jwt_verifier(jwks_server.url, ISSUER, AUDIENCE)
    assert jwks_server.fetches == 0  # fetched on first use, not at start
    app = create_app(GatewayConfig(triton_url="127.0.0.1:9", model_id="m", jwt=verifier))
    with TestClient(app) as client:
        for key, kid in ((keys.rsa, "rsa-1"), (keys.ec, "ec-1"), (keys.rsa, "rsa-1")):
            ok = client.get("/v1/models", headers={"Authorization": f"Bearer {keys.token(key, kid=kid)}"})
            assert ok.status_code == 200, ok.text
        assert jwks_server.fetches == 1  # PyJWKClient caches the set
        refused = client.get("/v1/models", headers={"Authorization": f"Bearer {keys.token(aud='x')}"})
        assert refused.status_code == 401 and "audience" in refused.json()["error"]["message"]
        assert client.get("/health").status_code == 503  # open (no Triton here), not 401


def test_jwks_url_unknown_kid_and_outage(jwks_server, keys):
    verifier = jwt_verifier(jwks_server.url, ISSUER, AUDIENCE)
    assert verifier.verify(keys.token())["sub"] == "user-1"
    with pytest.raises(TokenRefused, match="does not know") as unknown:
        verifier.verify(keys.token(keys.stranger, kid="rsa-9"))
    assert unknown.value.status == 401
    assert jwks_server.fetches == 1  # the refetch for an unknown kid waits out PyJWKClient's cooldown

    down = jwt_verifier(jwks_server.url, ISSUER, AUDIENCE)
    jwks_server.close()
    app = create_app(GatewayConfig(triton_url="127.0.0.1:9", model_id="m", jwt=down))
    with TestClient(app) as client:
        response = client.get("/v1/models", headers={"Authorization": f"Bearer {keys.token()}"})
    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("cannot check bearer tokens right now: the key set is unavailable")
    assert "127.0.0.1" not in message and "urlopen" not in message


def test_jwks_url_that_is_not_a_key_set(jwks_server, keys):
    jwks_server.body = {"keys": [{"kty": "oct", "kid": "rsa-1", "k": "c2VjcmV0"}]}
    verifier = jwt_verifier(jwks_server.url, ISSUER, AUDIENCE)
    with pytest.raises(TokenRefused) as refused:
        verifier.verify(forged({"alg": "HS256", "kid": "rsa-1"}, valid_claims(), b"secret"))
    assert refused.value.status == 401 and "algorithm" in refused.value.message
    jwks_server.status = 500
    with pytest.raises(TokenRefused) as unavailable:
        jwt_verifier(jwks_server.url, ISSUER, AUDIENCE).verify(keys.token())
    assert unavailable.value.status == 503


# --- start-up checks: called directly ---------------------------------------------------------------


def write_jwks(tmp_path: Path, body) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


@pytest.mark.parametrize(
    ("case", "words"),
    cases(
        ("missing", "no such file"),
        ("directory", "cannot read it (Is a directory)"),
        ("not json", "not JSON"),
        ("not a set", 'expected an object {"keys": [...]}'),
        ("empty", "no usable key (the set is empty)"),
        ("hmac only", "algorithm HS256; accepted: RS256, ES256"),
        ("short rsa", "2048"),
        ("no kid", "no 'kid'"),
        ("private", "is a private key"),
    ),
)
def test_bad_jwks_file(tmp_path, keys, case, words):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024) if case == "short rsa" else None
    private = jwt.algorithms.RSAAlgorithm.to_jwk(keys.rsa, as_dict=True)
    bodies = {
        "not json": "{keys: ",
        "not a set": [public_jwk(keys.rsa, "a")],
        "empty": {"keys": []},
        "hmac only": {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]},
        "short rsa": {"keys": [public_jwk(weak, "w")]} if weak else None,
        "no kid": {"keys": [{k: v for k, v in public_jwk(keys.rsa, "x").items() if k != "kid"}]},
        "private": {"keys": [{**private, "kid": "p"}]},
    }
    path = {"missing": str(tmp_path / "nope.json"), "directory": str(tmp_path)}.get(case)
    with pytest.raises(RuntimeUserError, match=re.escape(words)) as caught:
        jwt_verifier(path or write_jwks(tmp_path, bodies[case]), ISSUER, AUDIENCE)
    assert str(caught.value).startswith("--jwt-jwks ")


def test_jwks_file_keeps_usable_keys_only(tmp_path, keys, caplog):
    body = {"keys": [public_jwk(keys.rsa, "rsa-1"), {"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}
    key_set = KeySet.from_file(Path(write_jwks(tmp_path, body)))
    assert list(key_set.keys) == ["rsa-1"]
    assert "skipped key 1 (kid 'h'): algorithm HS256" in caplog.text


@pytest.mark.parametrize(
    ("jwks", "issuer", "audience", "words"),
    [
        (None, ISSUER, None, "--jwt-issuer needs --jwt-jwks"),
        (None, None, AUDIENCE, "--jwt-audience needs --jwt-jwks"),
        ("JWKS", None, AUDIENCE, "--jwt-jwks needs --jwt-issuer and --jwt-audience"),
        ("JWKS", ISSUER, None, "--jwt-jwks needs --jwt-issuer and --jwt-audience"),
        ("http://idp.example.test/jwks.json", ISSUER, AUDIENCE, "give an https:// URL"),
        ("https:///jwks.json", ISSUER, AUDIENCE, "give an https:// URL"),
    ],
    ids=["issuer only", "audience only", "no issuer", "no audience", "http URL", "URL without host"],
)
def test_jwt_option_combinations(tmp_path, keys, jwks, issuer, audience, words):
    jwks = write_jwks(tmp_path, keys.jwks()) if jwks == "JWKS" else jwks
    with pytest.raises(RuntimeUserError, match=re.escape(words)):
        jwt_verifier(jwks, issuer, audience)
    assert jwt_verifier(None, None, None) is None
    assert jwt_verifier("https://idp.example.test/jwks.json", ISSUER, AUDIENCE) is not None  # not fetched yet


@pytest.mark.parametrize(
    ("case", "words"),
    cases(
        ("cert only", "--ssl-certfile needs --ssl-keyfile"),
        ("key only", "--ssl-keyfile needs --ssl-certfile"),
        ("missing cert", "cannot read it (No such file or directory)"),
        ("cert is a directory", "cannot read it (Is a directory)"),
        ("not a certificate", "no PEM certificate in it"),
        ("not a key", "no PEM private key in it"),
        ("encrypted key", "the key is encrypted"),
        ("another key", "is not the key of the certificate"),
    ),
)
def test_bad_tls_files(tmp_path, case, words):
    cert, key = self_signed(tmp_path)
    _, other_key = self_signed(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    encrypted = tmp_path / "encrypted.key"
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    pairs = {
        "cert only": (cert, None),
        "key only": (None, key),
        "missing cert": (tmp_path / "nope.crt", key),
        "cert is a directory": (tmp_path, key),
        "not a certificate": (junk, key),
        "not a key": (cert, junk),
        "encrypted key": (cert, encrypted),
        "another key": (cert, other_key),
    }
    with pytest.raises(RuntimeUserError, match=re.escape(words)):
        tls_files(*pairs[case])
    assert tls_files(cert, key) == {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    assert tls_files(None, None) == {}


# --- the same through the CLI: one error line, exit 2, nothing started ---------------------------


@pytest.mark.parametrize(
    ("case", "words"),
    cases(
        ("issuer without jwks", "--jwt-issuer needs --jwt-jwks"),
        ("bad jwks file", "not JSON"),
        ("certfile without keyfile", "--ssl-certfile needs --ssl-keyfile"),
        ("unreadable certificate", "cannot read it"),
    ),
)
def test_cli_user_errors(tmp_path, keys, case, words):
    cert, key = self_signed(tmp_path)
    args = {
        "issuer without jwks": ("--jwt-issuer", ISSUER),
        "bad jwks file": (
            "--jwt-jwks",
            write_jwks(tmp_path, "[1,"),
            "--jwt-issuer",
            "i",
            "--jwt-audience",
            "a",
        ),
        "certfile without keyfile": ("--ssl-certfile", cert),
        "unreadable certificate": ("--ssl-certfile", tmp_path, "--ssl-keyfile", key),
    }[case]
    # A missing engines directory: its error would come first if the options were checked later.
    result = run_cli("serve", "--engines", tmp_path / "no-engines", "--port", "0", *args, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr
    assert "tritonserver" not in result.stdout
