"""A real SMTP server for slimta's client tests: aiosmtpd with STARTTLS or
implicit TLS and AUTH PLAIN/LOGIN (built in) and CRAM-MD5 (below).

Each message is written to DIR/N.eml, its envelope and session facts to
DIR/N.meta as key=value lines.
"""
import argparse
import hashlib
import hmac
import os
import signal
import ssl
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--mode", choices=["plain", "starttls", "implicit"], default="plain")
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--dir", required=True)
p.add_argument("--user", default="")
p.add_argument("--password", default="")
p.add_argument("--mechs", default="")
p.add_argument("--auth-reply", default="")
p.add_argument("--auth-plaintext", action="store_true")
a = p.parse_args()

ALL_MECHS = {"PLAIN", "LOGIN", "CRAM-MD5"}
offered = set(a.mechs.split()) if a.mechs else set()


def check(session, mechanism, login, password):
    session.mech = mechanism
    if a.auth_reply:
        return AuthResult(success=False, handled=False, message=a.auth_reply)
    ok = login == a.user.encode() and password == a.password.encode()
    return AuthResult(success=ok, handled=False, auth_data=LoginPassword(login, b""))


def authenticator(server, session, envelope, mechanism, auth_data):
    return check(session, mechanism, auth_data.login, auth_data.password)


class Handler:
    def __init__(self):
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        base = os.path.join(a.dir, str(self.n))
        login = session.login_data
        if isinstance(login, bytes):
            login = login.decode()
        meta = [
            f"mail_from={envelope.mail_from}",
            *[f"rcpt={r}" for r in envelope.rcpt_tos],
            f"tls={session.ssl is not None or server.transport.get_extra_info('ssl_object') is not None}",
            f"auth={login or ''}",
            f"mech={getattr(session, 'mech', '')}",
            f"helo={session.host_name}",
            f"peer_port={session.peer[1]}",
        ]
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".meta.tmp", "w") as f:
            f.write("\n".join(meta) + "\n")
        os.rename(base + ".eml.tmp", base + ".eml")
        os.rename(base + ".meta.tmp", base + ".meta")
        return "250 2.0.0 Ok: queued"

    async def auth_CRAM__MD5(self, server, args):
        challenge = f"<{os.getpid()}.{time.time_ns()}@aiosmtpd.test>".encode()
        response = await server.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        user, _, digest = response.decode().rpartition(" ")
        want = hmac.new(a.password.encode(), challenge, hashlib.md5).hexdigest()
        password = a.password.encode() if hmac.compare_digest(digest, want) else b"\0wrong"
        return check(server.session, "CRAM-MD5", user.encode(), password)


kwargs = dict(
    hostname="127.0.0.1",
    port=a.port,
    authenticator=authenticator,
    auth_require_tls=not a.auth_plaintext,
    auth_exclude_mechanism=ALL_MECHS - offered,
)
if a.mode != "plain":
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    if a.mode == "starttls":
        kwargs["tls_context"] = ctx
    else:
        kwargs["ssl_context"] = ctx
handler = Handler()
if not offered:
    # No AUTH at all: aiosmtpd offers AUTH whenever a method exists.
    Handler.auth_CRAM__MD5 = None
    del Handler.auth_CRAM__MD5
controller = Controller(handler, **kwargs)
controller.start()
signal.sigwait({signal.SIGTERM, signal.SIGINT})
controller.stop()
