"""Which headers cross the gateway between a TorchServe client and its handler. TorchServe
gives a handler every request header (`context.get_request_header`) and sends the client the
headers a handler sets (`context.set_response_header`); the gateway relays both over REST
(gRPC carries neither) except:

- hop-by-hop headers (RFC 9110 7.6.1), and those a `Connection` header names: they describe
  one connection, not the request;
- `Host`: the handler sees TorchServe's own address, as when it is called directly (a Host
  for the gateway could misroute through a proxy in front of TorchServe);
- the framing the gateway redoes (`Content-Length`, `Content-Encoding`: the gateway inflates a
  compressed body before it passes it on), and `Content-Type`, which goes on its own;
- `Authorization` and `Proxy-Authorization`: the caller's credentials for the gateway, not for
  TorchServe;
- back to the client, `Date`, `Server` and TorchServe's `x-request-id` (TorchServe's own
  request id; the gateway answers its own `X-Request-Id`). A reply's `Content-Encoding` is
  relayed with the body, which the gateway does not inflate.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

HOP_BY_HOP = frozenset(map(str.lower, (
    "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding",
    "Upgrade", "Expect", "Proxy-Authenticate")))
TO_HANDLER_DENIED = HOP_BY_HOP | frozenset(map(str.lower, (
    "Host", "Content-Length", "Content-Encoding", "Content-Type", "Authorization",
    "Proxy-Authorization")))
TO_CLIENT_DENIED = HOP_BY_HOP | frozenset(map(str.lower, (
    "Content-Length", "Content-Type", "Date", "Server", "X-Request-Id")))


def to_handler(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return _without(headers, TO_HANDLER_DENIED)


def to_client(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return _without(headers, TO_CLIENT_DENIED)


def _without(headers: Mapping[str, str], denied: frozenset[str]) -> CIMultiDict[str]:
    named = {n.strip().lower() for v in _all(headers, "Connection") for n in v.split(",")}
    return CIMultiDict((name, value) for name, value in headers.items()
                       if name.lower() not in denied and name.lower() not in named)


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [value] if value is not None else []
