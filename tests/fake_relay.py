"""Loopback SMTP servers that answer like Google's SMTP relay, one port per scenario.

The replies are the ones in tests/data/relay_scenarios.yaml (each with its source). One asyncio
loop in a daemon thread serves every scenario of a test module; a scenario is a dict:
  banner   greeting (str or list of lines), or "hang" (accept, never speak) / "reset" (RST) /
           "refused" (nothing listens) / "blackhole" (connections never answered)
  starttls offer STARTTLS in EHLO (default true)
  banner_delay  seconds before the greeting (a slow relay, just under the client's timeout)
  close_after_banner  close the connection right after the greeting
  tls      the TLS handshake (after "220 Ready to start TLS", or first with implicit):
           ok | untrusted | expired | wrong-name | tls1.0 | reset | hang | plaintext
  implicit TLS from the first byte (port 465 style)
  starttls_reply  the answer to STARTTLS when it is not "220 … Ready to start TLS"
  ehlo, ehlo_tls, mail, rcpt, data, eom
           the reply to EHLO (before / after TLS), MAIL, RCPT, DATA and the end of the message;
           a 421 reply closes the connection, as Google does; "drop" closes it instead of answering,
           "close" too but cleanly (TLS close_notify, then FIN),
           "hang" never answers
  require_tls  answer MAIL with Google's 530 while the session is not encrypted
  senders  {text in MAIL FROM: reply}: a reply for some envelope senders only
Certificates come from trustme: `trusted_ca` signs the good one, another CA the untrusted one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import struct
import tempfile
import threading
import warnings
from pathlib import Path

import trustme

GREETING = "220 smtp-relay.gmail.com ESMTP a1-20020a05600c000000b00000000000000si0.0 - gsmtp"
MUST_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first. a1-20020a0560 - gsmtp"
ACCEPTED = "250 2.0.0 OK  1764288000 a1-20020a05600c000000b00000000000000si0.0 - gsmtp"


def lines(reply) -> list[str]:
    return reply if isinstance(reply, list) else [reply]


def closed_port() -> socket.socket:
    """A port bound and never listening: every connection is refused, and no other process (another
    xdist worker) can take it while the socket is held, as it could a port freed again."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), like a middlebox or a crashed peer."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FakeRelay:
    def __init__(self, hostname: str = "localhost"):
        self.trusted_ca, untrusted_ca = trustme.CA(), trustme.CA()
        self.contexts = {}
        now = datetime.datetime.now(datetime.UTC)
        past = {"not_before": now - datetime.timedelta(days=90), "not_after": now - datetime.timedelta(days=1)}
        for name, ca, names, dates in (
            ("ok", self.trusted_ca, (hostname, "127.0.0.1"), {}),
            ("untrusted", untrusted_ca, (hostname, "127.0.0.1"), {}),
            ("expired", self.trusted_ca, (hostname, "127.0.0.1"), past),
            ("wrong-name", self.trusted_ca, ("smtp.example.net",), {}),
            ("tls1.0", self.trusted_ca, (hostname, "127.0.0.1"), {}),
        ):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ca.issue_cert(*names, **dates).configure_cert(context)
            self.contexts[name] = context
        tls10 = self.contexts["tls1.0"]  # an old relay that speaks only TLS 1.0
        tls10.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tls10.minimum_version = tls10.maximum_version = ssl.TLSVersion.TLSv1
        self.dir = tempfile.TemporaryDirectory(prefix="fake-relay-")
        self.ca_file = Path(self.dir.name) / "ca.pem"  # for clients that read SSL_CERT_FILE (Ruby, the VM's python)
        self.trusted_ca.cert_pem.write_to_path(str(self.ca_file))
        self.commands: dict[int, list[str]] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.trusted_ca.configure_trust(context)
        return context

    def serve(self, scenario: dict) -> int:
        """Starts a server for the scenario; returns its port (a closed port for banner=refused)."""
        if scenario.get("banner") == "refused":
            self.held = getattr(self, "held", []) + [closed_port()]
            return self.held[-1].getsockname()[1]
        if scenario.get("banner") == "blackhole":
            return self.blackhole()

        async def start():
            server = await asyncio.start_server(lambda r, w: self.session(scenario, r, w), "127.0.0.1", 0)
            return server.sockets[0].getsockname()[1]

        port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        self.commands[port] = []
        return port

    def blackhole(self) -> int:
        """A port whose connections are never answered: a listener that never accepts, its queue full,
        so the kernel drops further SYNs (what a firewall that drops packets looks like)."""
        listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        port = listener.getsockname()[1]
        self.held = getattr(self, "held", []) + [listener]
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            self.held.append(filler)
        return port

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        for sock in getattr(self, "held", []):
            sock.close()
        self.dir.cleanup()

    async def session(self, s: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log = self.commands[writer.get_extra_info("sockname")[1]]
        stalled = []

        def say(reply) -> bool:
            """Writes a reply; False when it ends the dialogue (421, refused at connect, drop, hang)."""
            if reply == "hang":
                stalled.append(True)
                return False
            if reply == "drop":
                writer.transport.abort()  # no QUIT, no TLS close_notify
                return False
            if reply == "close":
                writer.close()
                return False
            writer.write("".join(f"{line}\r\n" for line in lines(reply)).encode())
            return not lines(reply)[-1].startswith("421")

        async def handshake() -> bool:
            """The TLS handshake the scenario asks for; False when the session ends instead."""
            mode = s.get("tls", "ok")
            if mode == "reset":
                await reader.read(1)  # the ClientHello has arrived
                reset(writer)
                return False
            if mode in ("hang", "plaintext"):
                if mode == "plaintext":
                    say(GREETING)
                    await writer.drain()
                await reader.read()
                return False
            await writer.start_tls(self.contexts[mode])
            return True

        try:
            if s.get("implicit") and not await handshake():
                return
            banner = s.get("banner", GREETING)
            if banner == "hang":
                await reader.read()
                return
            if banner == "reset":
                reset(writer)
                return
            await asyncio.sleep(s.get("banner_delay", 0))
            if not say(banner) or not lines(banner)[-1].startswith("220") or s.get("close_after_banner"):
                return
            secure = bool(s.get("implicit"))
            while line := await reader.readline():
                command = line.decode(errors="replace").strip()
                log.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    custom = s.get("ehlo_tls" if secure else "ehlo")
                    if custom:
                        if not say(custom):
                            break
                        continue
                    offer = ["250-STARTTLS"] if s.get("starttls", True) and not secure else []
                    say(
                        [
                            "250-smtp-relay.gmail.com at your service, [127.0.0.1]",
                            "250-SIZE 157286400",
                            "250-8BITMIME",
                            *offer,
                            "250-ENHANCEDSTATUSCODES",
                            "250-PIPELINING",
                            "250 SMTPUTF8",
                        ]
                    )
                elif verb == "STARTTLS":
                    if not s.get("starttls", True):
                        say("502 5.5.1 Unrecognized command. a1-20020a0560 - gsmtp")
                        continue
                    if not s.get("starttls_reply", "220").startswith("220"):
                        if not say(s["starttls_reply"]):
                            break
                        continue
                    say("220 2.0.0 Ready to start TLS")
                    await writer.drain()
                    if not await handshake():
                        return
                    secure = True
                elif verb == "MAIL":
                    reply = next(
                        (r for key, r in s.get("senders", {}).items() if key in command),
                        s.get("mail", "250 2.1.0 OK a1-20020a0560 - gsmtp"),
                    )
                    if s.get("require_tls") and not secure:
                        say(MUST_STARTTLS)
                    elif not say(reply):
                        break
                elif verb == "RCPT":
                    if not say(s.get("rcpt", "250 2.1.5 OK a1-20020a0560 - gsmtp")):
                        break
                elif verb == "DATA":
                    reply = s.get("data", "354 Go ahead a1-20020a0560 - gsmtp")
                    if not say(reply):
                        break
                    if reply.startswith("354"):
                        while (await reader.readline()) not in (b".\r\n", b""):
                            pass
                        if not say(s.get("eom", ACCEPTED)):
                            break
                elif verb == "RSET":
                    say("250 2.1.5 Flushed a1-20020a0560 - gsmtp")
                elif verb == "QUIT":
                    say("221 2.0.0 closing connection a1-20020a0560 - gsmtp")
                    break
                else:
                    say("502 5.5.1 Unrecognized command. a1-20020a0560 - gsmtp")
                await writer.drain()
            if stalled:
                await reader.read()  # until the client gives up
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return  # the client gave up (bad certificate, timeout): nothing to answer
        finally:
            if not writer.transport.is_closing():
                with contextlib.suppress(OSError):
                    await writer.drain()
                writer.close()
