"""fcgi_client.py: a minimal FastCGI client, to talk to the app's socket directly (bypassing
nginx) for what nginx would never let through: bodies shorter than CONTENT_LENGTH, over-size
CONTENT_LENGTH."""

import socket
import struct

FCGI_BEGIN_REQUEST, FCGI_END_REQUEST, FCGI_PARAMS, FCGI_STDIN, FCGI_STDOUT = 1, 3, 4, 5, 6


def _record(rtype, content, request_id=1):
    return struct.pack(">BBHHBx", 1, rtype, request_id, len(content), 0) + content


def _length(n):
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def _params(params):
    out = b""
    for k, v in params.items():
        k, v = k.encode(), v.encode()
        out += _length(len(k)) + _length(len(v)) + k + v
    return out


def request(socket_path, params, stdin=b"", timeout=10, keep_conn=False, closed_after=None):
    """Sends one request; returns (status_code, headers_text, body_bytes). With keep_conn, asks
    the app to keep the connection (FCGI_KEEP_CONN); closed_after, a list, then receives whether
    the app closed the connection after answering."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        msg = _record(FCGI_BEGIN_REQUEST, struct.pack(">HB5x", 1, 1 if keep_conn else 0))
        msg += _record(FCGI_PARAMS, _params(params)) + _record(FCGI_PARAMS, b"")
        if stdin:
            msg += _record(FCGI_STDIN, stdin)
        msg += _record(FCGI_STDIN, b"")
        s.sendall(msg)
        out = b""
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 8:
                _, rtype, _, clen, plen = struct.unpack(">BBHHB", buf[:7])
                if len(buf) < 8 + clen + plen:
                    break
                content = buf[8:8 + clen]
                buf = buf[8 + clen + plen:]
                if rtype == FCGI_STDOUT:
                    out += content
                elif rtype == FCGI_END_REQUEST:
                    head, _, body = out.partition(b"\r\n\r\n")
                    status = int(head.split(b"Status: ")[1][:3])
                    if closed_after is not None:
                        s.settimeout(1)
                        try:
                            closed_after.append(s.recv(1) == b"")
                        except socket.timeout:
                            closed_after.append(False)
                    return status, head.decode(), body
    raise RuntimeError("no FCGI_END_REQUEST")
