"""bunq's official Python SDK (`bunq-sdk` on PyPI) as a client of ipgate's management API.

Run by tests/bunq_sdk.rs: `python3 sdk_client.py BASE_URL USER_ID CREDENTIAL_ID
SERVER_PUBLIC_KEY_PEM`, with the credential's key on stdin (never in argv, where `ps`
shows it). Prints one `ok:` line per check and `bunq-sdk: all checks passed` at the end;
any failure is an exception and a non-zero exit.

What the SDK is handed, and why; the SDK's code itself is not changed in any way:

- bunq's SDK starts with a handshake: POST /installation (bunq sends back its server
  public key and an installation token), POST /device-server, POST /session-server
  (a session token). ipgate has no installation or session: a key is used as it is,
  from an address on its whitelist. So instead of `ApiContext.create`, the test builds
  the `ApiContext` the handshake would have produced: its session token is the ipgate
  key (the SDK sends it as `X-Bunq-Client-Authentication`, ipgate's default header),
  its environment's `uri_base` is the gateway, and its installation holds a client key
  pair made here (the SDK signs every request body with it; ipgate ignores
  `X-Bunq-Client-Signature`) and, as the server public key, the public half of the
  gateway's `auth.response_signing_key` (what `ipgate admin server-public-key` or
  `openssl pkey -pubout` prints, as the README tells an operator to hand it out). The device was registered before this
  script ran.
- With that key the SDK verifies `X-Bunq-Server-Signature` on every successful answer,
  as it does against bunq. To show it really does: a context holding another public
  key, and answers changed or stripped of their signature on the way (a proxy in this
  script), must all make the SDK raise.
- `BunqContext.load_api_context` would also fetch the user's monetary accounts, which
  are bunq's banking API (the upstream's business behind ipgate), not ipgate's: the
  test sets the user context itself.
"""

import datetime
import http.client
import http.server
import socket
import sys
import threading
import urllib.parse

from bunq.sdk.context.api_context import ApiContext
from bunq.sdk.context.bunq_context import BunqContext
from bunq.sdk.context.installation_context import InstallationContext
from bunq.sdk.context.session_context import SessionContext
from bunq.sdk.context.user_context import UserContext
from bunq.sdk.exception.bad_request_exception import BadRequestException
from bunq.sdk.exception.bunq_exception import BunqException
from bunq.sdk.exception.forbidden_exception import ForbiddenException
from bunq.sdk.exception.not_found_exception import NotFoundException
from bunq.sdk.http.api_client import ApiClient
from bunq.sdk.model.core.session_token import SessionToken
from bunq.sdk.model.generated.endpoint import (
    PermittedIpApiObject,
    UserCredentialPasswordIpApiObject,
    UserPersonApiObject,
)
from bunq.sdk.security import security

# The SDK (requests) sets no timeout of its own: no call may hang the test.
socket.setdefaulttimeout(30)

RESPONSE_ID = "X-Bunq-Client-Response-Id"
REQUEST_ID = "X-Bunq-Client-Request-Id"
SERVER_SIGNATURE = "X-Bunq-Server-Signature"

checks = 0


def ok(what):
    global checks
    checks += 1
    print(f"ok: {what}", flush=True)


class Gateway:
    """Stands in for `ApiEnvironmentType` (bunq's production or sandbox): the SDK reads
    only its `uri_base`."""

    def __init__(self, uri_base):
        self.uri_base = uri_base


def context(base, user_id, key, server_public_key):
    """The ApiContext bunq's handshake would leave behind, pointing at ipgate."""
    api_context = ApiContext(Gateway(base))
    # No installation token (ipgate has no installation); the client key is the SDK's
    # own kind, made here; the server key is the one the gateway signs with.
    api_context._installation_context = InstallationContext(
        None, security.generate_rsa_private_key(), server_public_key
    )
    token = SessionToken()
    token._token = key
    user = UserPersonApiObject()
    user._id_ = user_id
    # Far from expiry, so the SDK never tries to open a new session.
    expiry = datetime.datetime.now() + datetime.timedelta(days=1)
    api_context._session_context = SessionContext(token, expiry, user)
    return api_context, user


class Meddler(http.server.ThreadingHTTPServer):
    """A man in the middle for GETs: forwards them to the gateway and passes the answer
    back through `change(body, headers) -> (body, headers)`."""

    def __init__(self, gateway_base, change):
        target = urllib.parse.urlsplit(gateway_base)
        self.gateway = (target.hostname, target.port)
        self.change = change
        super().__init__(("127.0.0.1", 0), MeddlerHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def base(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1/"


class MeddlerHandler(http.server.BaseHTTPRequestHandler):
    HOP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}

    def do_GET(self):
        gateway = http.client.HTTPConnection(*self.server.gateway, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self.HOP}
        gateway.request("GET", self.path, headers=headers)
        answer = gateway.getresponse()
        body, headers = self.server.change(answer.read(), answer.getheaders())
        gateway.close()
        self.send_response(answer.status)
        for name, value in headers:
            if name.lower() not in self.HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def must_not_verify(what, call):
    """`call` must raise: the SDK refused an answer it could not verify."""
    try:
        call()
    except BunqException as e:
        assert str(e) == "Could not validate response signature.", repr(e)
        return
    except KeyError as e:
        # bunq-sdk reads the header without a default: no signature is a KeyError.
        assert SERVER_SIGNATURE.lower() in str(e).lower(), repr(e)
        return
    raise AssertionError(f"the SDK took {what}")


def main():
    base, user_id, credential_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with open(sys.argv[4]) as f:
        server_public_key = security.rsa_key_from_string(f.read())
    key = sys.stdin.readline().strip()

    api_context, user = context(base, user_id, key, server_public_key)
    BunqContext.update_api_context(api_context)
    BunqContext._user_context = UserContext(user_id, user)
    assert api_context.token == key and api_context.is_session_active()

    # Credentials: list and get.
    listed = UserCredentialPasswordIpApiObject.list()
    mine = [c for c in listed.value if c.id_ == credential_id]
    assert len(mine) == 1, [c.id_ for c in listed.value]
    assert mine[0].status == "ACTIVE", mine[0].status
    assert mine[0].token_value is None
    assert RESPONSE_ID in listed.headers, dict(listed.headers)
    assert SERVER_SIGNATURE in listed.headers, dict(listed.headers)
    ok("CredentialPasswordIp list: the credential, ACTIVE, no token value, signed")
    one = UserCredentialPasswordIpApiObject.get(credential_id).value
    assert (one.id_, one.status) == (credential_id, "ACTIVE")
    assert one.permitted_device.ip == "127.0.0.1", one.permitted_device.ip
    ok("CredentialPasswordIp get: status and the registered device's address")

    # Entries: the registration's own, then created ones.
    entries = PermittedIpApiObject.list(credential_id).value
    assert [(e.ip, e.status) for e in entries] == [("127.0.0.1", "ACTIVE")], entries
    ok("PermittedIp list: the address registered with the device")
    created = {}
    for n in range(1, 13):
        address = f"127.0.1.{n}"
        status = "INACTIVE" if n % 4 == 0 else "ACTIVE"
        answer = PermittedIpApiObject.create(credential_id, address, status)
        assert isinstance(answer.value, int), answer.value
        created[answer.value] = (address, status)
    assert len(created) == 12
    ok("PermittedIp create: 12 entries, each with its own id")
    item, (address, status) = next(iter(created.items()))
    got = PermittedIpApiObject.get(credential_id, item).value
    assert (got.ip, got.status) == (address, status), (got.ip, got.status)
    ok("PermittedIp get: the created entry")
    changed = PermittedIpApiObject.update(credential_id, item, "INACTIVE")
    assert changed.value == item
    got = PermittedIpApiObject.get(credential_id, item).value
    assert (got.ip, got.status) == (address, "INACTIVE")
    created[item] = (address, "INACTIVE")
    ok("PermittedIp update: ACTIVE to INACTIVE, read back")

    # Pagination with the SDK's own cursors: newest first, 10 to a page by default.
    want = sorted([("127.0.0.1", "ACTIVE")] + list(created.values()))
    first = PermittedIpApiObject.list(credential_id)
    assert len(first.value) == 10, len(first.value)
    assert first.pagination.has_previous_page()
    assert not first.pagination.has_next_page_assured()
    older = PermittedIpApiObject.list(
        credential_id, params=first.pagination.url_params_previous_page
    )
    assert len(older.value) == 3, len(older.value)
    assert not older.pagination.has_previous_page()
    pages = first.value + older.value
    assert sorted((e.ip, e.status) for e in pages) == want, pages
    ok("Pagination: older_url from the first page reaches the last three")
    back = PermittedIpApiObject.list(
        credential_id, params=older.pagination.url_params_next_page
    )
    assert [e.ip for e in back.value] == [e.ip for e in first.value]
    ok("Pagination: newer_url from the last page leads back to the first")
    seen, page = [], PermittedIpApiObject.list(credential_id, params={"count": "4"})
    while True:
        seen += page.value
        assert len(page.value) <= 4
        if not page.pagination.has_previous_page():
            break
        page = PermittedIpApiObject.list(
            credential_id, params=page.pagination.url_params_previous_page
        )
    assert sorted((e.ip, e.status) for e in seen) == want, seen
    assert len(seen) == 13
    ok("Pagination: count=4 walks every entry once, newest first")
    # The future: nothing newer yet; an entry added later shows up there.
    future = first.pagination.url_params_next_page
    assert PermittedIpApiObject.list(credential_id, params=future).value == []
    PermittedIpApiObject.create(credential_id, "127.0.1.13")
    arrived = PermittedIpApiObject.list(credential_id, params=future).value
    assert [(e.ip, e.status) for e in arrived] == [("127.0.1.13", "ACTIVE")], arrived
    ok("Pagination: future_url polls for new entries")

    # bunq's ids: a request id of the caller's is echoed, every answer has its own id.
    mine = {REQUEST_ID: "sdk-test-0001"}
    answer = PermittedIpApiObject.list(credential_id, custom_headers=mine)
    assert answer.headers[REQUEST_ID] == "sdk-test-0001", dict(answer.headers)
    again = PermittedIpApiObject.list(credential_id, custom_headers=mine)
    assert answer.headers[RESPONSE_ID] != again.headers[RESPONSE_ID]
    ok("X-Bunq-Client-Request-Id echoed; X-Bunq-Client-Response-Id fresh per answer")

    # Errors, parsed into the SDK's exceptions.
    try:
        PermittedIpApiObject.create(credential_id, "127.0.1.1")
        raise AssertionError("a duplicate address was taken")
    except BadRequestException as e:
        assert e.response_code == 400
        assert "already" in e.message or "duplicate" in e.message.lower(), e.message
        assert e.response_id != ApiClient._ERROR_COULD_NOT_DETERMINE_RESPONSE_ID_HEADER
        assert e.response_id in e.message, e.message
    ok("400 duplicate address: BadRequestException with ipgate's message and response id")
    try:
        PermittedIpApiObject.create(credential_id, "*")
        raise AssertionError("the wildcard was taken")
    except ForbiddenException as e:
        assert e.response_code == 403 and "operator" in e.message, e.message
    ok("403 wildcard: ForbiddenException")
    try:
        PermittedIpApiObject.get(credential_id, 999999)
        raise AssertionError("a missing entry was found")
    except NotFoundException as e:
        assert e.response_code == 404, e.message
    ok("404 missing entry: NotFoundException")
    stranger, _ = context(base, user_id, "ipg_" + "0" * 40, server_public_key)
    BunqContext.update_api_context(stranger)
    try:
        UserCredentialPasswordIpApiObject.list()
        raise AssertionError("an unknown key was let in")
    except ForbiddenException as e:
        assert e.response_code == 403 and "Insufficient authorisation" in e.message
        assert e.response_id != ApiClient._ERROR_COULD_NOT_DETERMINE_RESPONSE_ID_HEADER
    BunqContext.update_api_context(api_context)
    ok("403 unknown key: ForbiddenException")

    after = {(e.ip, e.status) for e in PermittedIpApiObject.list(
        credential_id, params={"count": "200"}).value}
    assert after == set(want) | {("127.0.1.13", "ACTIVE")}, after
    ok("refused writes stored nothing")

    # The SDK really verifies: every answer above passed its check, and these must not.
    impostor = security.generate_rsa_private_key().publickey()
    pinned_elsewhere, _ = context(base, user_id, key, impostor)
    BunqContext.update_api_context(pinned_elsewhere)
    must_not_verify("an answer signed by another key", lambda: PermittedIpApiObject.list(
        credential_id))
    ok("a context holding another server key refuses ipgate's answers")

    def relabel(body, headers):
        # Same length, still valid JSON, one address changed.
        assert b'"127.0.0.1"' in body, body
        return body.replace(b'"127.0.0.1"', b'"127.0.0.9"'), headers

    def strip(body, headers):
        return body, [(n, v) for n, v in headers if n.lower() != SERVER_SIGNATURE.lower()]

    for change, what in [(relabel, "a changed body"), (strip, "an unsigned answer")]:
        meddler = Meddler(base, change)
        try:
            between, _ = context(meddler.base(), user_id, key, server_public_key)
            BunqContext.update_api_context(between)
            must_not_verify(what, lambda: PermittedIpApiObject.list(
                credential_id, params={"count": "200"}))
        finally:
            meddler.shutdown()
            meddler.server_close()
    BunqContext.update_api_context(api_context)
    ok("a body changed on the way, or an answer without signature, is refused")
    print(f"bunq-sdk: all {checks} checks passed")


if __name__ == "__main__":
    main()
