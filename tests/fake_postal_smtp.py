"""Postal 3.3.6's SMTP server (port 25) as far as clients see it before DATA: greeting, EHLO, STARTTLS
and AUTH, with the replies of app/lib/smtp_server/client.rb at tag 3.3.6:
  greeting  "220 <smtp_hostname> ESMTP Postal/<trace id>"                                    line 126
  EHLO      "250-My capabilities are", "250-STARTTLS" (tls_enabled, not yet TLS),
            "250 AUTH CRAM-MD5 PLAIN LOGIN"                                                  lines 151-161
  STARTTLS  "220 Ready to start TLS", or "502 TLS not available" when TLS is off              lines 139-148
  AUTH CRAM-MD5  challenge "<" + sha1[0, 20] + "@<smtp_hostname>>" sent base64 in a 334; the answer
            "<username> <hex HMAC-MD5(key, challenge)>"; the username is split on the first / or _ into
            organization and server permalinks and the server looked up by them ("535 Denied" when none);
            then each SMTP credential of that server is tried ("235 Granted for <org>/<server>")   lines 244-283
  AUTH PLAIN/LOGIN  only the password is looked up                                           lines 182-241
  MAIL, RCPT, DATA  "250 OK", "530 Authentication required" for RCPT without AUTH, "354 Go ahead",
            "250 OK" after the message                                                       lines 302-543
  QUIT      "221 Closing Connection"                                                         line 136
The messages it accepted are in `received` (mail from, rcpt to, data).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import ssl

from fake_relay import FakeRelay


class FakePostalSMTP(FakeRelay):
    def __init__(
        self,
        servers: dict[tuple[str, str], list[str]],
        hostname: str = "postal.example.com",
        context: ssl.SSLContext | None = None,
        tls_enabled: bool = True,
    ):
        """servers: (organization permalink, server permalink) -> its SMTP credential keys."""
        super().__init__()
        self.servers, self.hostname, self.tls_enabled = servers, hostname, tls_enabled
        self.tls = context or self.contexts["ok"]
        self.received: list[tuple[str, list[str], str]] = []
        self.port = self.serve({})

    async def session(self, s: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log = self.commands[writer.get_extra_info("sockname")[1]]

        async def say(*replies: str) -> None:
            writer.write("".join(f"{r}\r\n" for r in replies).encode())
            await writer.drain()

        async def read() -> str:
            line = (await reader.readline()).decode().rstrip("\r\n")
            log.append(line)
            return line

        secure, authenticated, envelope = False, False, ["", []]
        try:
            await say(f"220 {self.hostname} ESMTP Postal/{secrets.token_hex(3)}")
            while line := await read():
                if re.match(r"QUIT", line, re.I):
                    await say("221 Closing Connection")
                    break
                if re.match(r"STARTTLS", line, re.I):
                    if not self.tls_enabled:
                        await say("502 TLS not available")
                        continue
                    await say("220 Ready to start TLS")
                    await writer.start_tls(self.tls)
                    secure = True
                elif re.match(r"EHLO", line, re.I):
                    offer = ["250-STARTTLS"] if self.tls_enabled and not secure else []
                    await say("250-My capabilities are", *offer, "250 AUTH CRAM-MD5 PLAIN LOGIN")
                elif re.match(r"AUTH CRAM-MD5", line, re.I):
                    digest = hashlib.sha1(secrets.token_bytes(8)).hexdigest()
                    challenge = f"<{digest[:20]}@{self.hostname}>"
                    await say("334 " + base64.b64encode(challenge.encode()).decode())
                    username, _, answer = base64.b64decode(await read()).decode().partition(" ")
                    org, server, *_ = re.split(r"[/_]", username.strip(), maxsplit=1) + [None]  # split(/[\/_]/, 2)
                    keys = self.servers.get((org, server))
                    if keys is None:
                        await say("535 Denied")
                        continue
                    granted = any(
                        hmac.compare_digest(hmac.new(k.encode(), challenge.encode(), "md5").hexdigest(), answer.strip())
                        for k in keys
                    )
                    authenticated = granted
                    await say(f"235 Granted for {org}/{server}" if granted else "535 Denied")
                elif re.match(r"MAIL FROM", line, re.I):
                    envelope = [line.split(":", 1)[1].strip(), []]
                    await say("250 OK")
                elif re.match(r"RCPT TO", line, re.I):
                    if not authenticated:
                        await say("530 Authentication required")
                        continue
                    envelope[1].append(line.split(":", 1)[1].strip())
                    await say("250 OK")
                elif re.match(r"DATA", line, re.I):
                    await say("354 Go ahead")
                    data = []
                    while (chunk := await reader.readline()) not in (b".\r\n", b""):
                        data.append(chunk.decode(errors="replace"))
                    self.received.append((envelope[0], envelope[1], "".join(data)))
                    await say("250 OK")
                else:
                    await say("502 Invalid/unsupported command")
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        finally:
            if not writer.transport.is_closing():
                writer.close()
