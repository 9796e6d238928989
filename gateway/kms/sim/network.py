"""KmeNetwork: a set of simulated KMEs serving ETSI GS QKD 014 and SKIP over mutual TLS.

One asyncio task owns everything: each KME is an aiohttp server on its own port, all sharing one
:class:`~gateway.kms.sim.model.KeyNetwork` (links, pools, parked keys). Stopping a KME closes its
listener and connections but keeps its state, like a KME process restarting over a persistent
store; while it is down it can neither answer nor relay.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import structlog
from aiohttp import web

from gateway.kms.sim import skip
from gateway.kms.sim.faults import Faults
from gateway.kms.sim.model import KeyNetwork, KmeLimits, LinkSpec
from gateway.kms.sim.pki import Pki, ensure_pki
from gateway.kms.sim.rates import Fluctuation
from gateway.kms.sim.server import KmeContext, build_app

__all__ = ["KmeNetwork", "server_tls_context"]

# A stopped KME must not hold a test for aiohttp's default 60 s grace period: in-flight requests
# get this long, then their connections are closed unanswered (as when a real KME crashes).
_SHUTDOWN_GRACE_S = 0.25


def server_tls_context(pki: Pki, kme_id: str) -> ssl.SSLContext:
    """TLS >= 1.2 server context of one KME that requires a client certificate of the PKI CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.kme_cert(kme_id)), str(pki.kme_key(kme_id)))
    return ctx


class _Kme:
    def __init__(self, kme_id: str, host: str, port: int, ctx: KmeContext, tls: ssl.SSLContext):
        self.kme_id, self.host, self.port = kme_id, host, port
        self.ctx, self.tls = ctx, tls
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = build_app(self.ctx)
        skip.add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.tls,
                           reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]  # the port the OS picked when asked for 0
        self.runner = runner
        self.ctx.faults._start()

    async def stop(self) -> None:
        if self.runner is None:
            return
        self.ctx.faults._stop()  # paused requests give up instead of waiting for a resume
        runner, self.runner = self.runner, None
        await runner.cleanup()


class KmeNetwork:
    """Embedded KME network; use as ``async with KmeNetwork(...) as net``.

    Args:
        pki_dir: PKI directory, created by :func:`ensure_pki` if anything is missing.
        kmes: KME ID -> (host, port); port 0 picks a free port, kept across restarts.
        links: QKD links: undirected pairs of KME IDs, or :class:`LinkSpec` with the link's own
            mean key rate and starting stock.
        saes: SAE ID -> the KME ID it is attached to (its client certificate's CN is the SAE ID),
            or a list of KME IDs, one in each KME network the SAE uses (networks that share no
            link: this is how one SAE gets node-disjoint paths).
        key_rate: mean refill rate in bits/s of every link that does not set its own; 0 = never
            refills.
        max_key_count: link pool capacity in keys of ``key_size`` bits (pools start full).
        key_size: default key size in bits.
        max_key_per_request: largest ``number`` one enc_keys call may ask for.
        min_key_size, max_key_size: accepted key sizes in bits.
        clock: monotonic clock for the pools (tests pass a fake one).
        fluctuation: how every link's rate moves around its mean (default: constant).
    """

    def __init__(
        self,
        pki_dir: Path | str,
        kmes: dict[str, tuple[str, int]],
        links: Sequence[tuple[str, str] | LinkSpec],
        saes: Mapping[str, str | Sequence[str]],
        key_rate: float = 0.0,
        max_key_count: int = 1000,
        key_size: int = 256,
        max_key_per_request: int = 128,
        *,
        min_key_size: int = 64,
        max_key_size: int = 8192,
        clock: Callable[[], float] | None = None,
        fluctuation: Fluctuation | None = None,
    ) -> None:
        if not kmes:
            raise ValueError("a KME network needs at least one KME")
        limits = KmeLimits(
            key_size=key_size, max_key_count=max_key_count,
            max_key_per_request=max_key_per_request, min_key_size=min_key_size,
            max_key_size=max_key_size,
        )
        self.model = KeyNetwork(kmes, links, saes, limits, key_rate, clock, fluctuation)
        self._pki = ensure_pki(pki_dir, kmes={k: [h] for k, (h, _) in kmes.items()},
                               saes=list(saes))
        self._log = structlog.get_logger("gateway.kms.sim")
        self._kmes: dict[str, _Kme] = {}
        for kme_id, (host, port) in kmes.items():
            ctx = KmeContext(kme_id, self.model, Faults(), self._log.bind(kme=kme_id))
            self._kmes[kme_id] = _Kme(kme_id, host, port, ctx,
                                      server_tls_context(self._pki, kme_id))

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> KmeNetwork:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        try:
            for kme_id in self._kmes:
                await self.start_kme(kme_id)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for kme_id in self._kmes:
            await self.stop_kme(kme_id)

    async def start_kme(self, kme_id: str) -> None:
        """(Re)start one KME on its port; a no-op if it runs."""
        kme = self._get(kme_id)
        if kme.runner is not None:
            return
        await kme.start()
        self.model.up.add(kme_id)
        self._log.info("kme_started", kme=kme_id, url=self.url(kme_id))

    async def stop_kme(self, kme_id: str) -> None:
        """Stop one KME: its port refuses connections and it relays nothing until restarted."""
        kme = self._get(kme_id)
        self.model.up.discard(kme_id)
        if kme.runner is not None:
            await kme.stop()
            self._log.info("kme_stopped", kme=kme_id)

    # -- inspection -----------------------------------------------------------------------------
    def _get(self, kme_id: str) -> _Kme:
        try:
            return self._kmes[kme_id]
        except KeyError:
            raise KeyError(f"unknown KME {kme_id!r}; known: {sorted(self._kmes)}") from None

    @property
    def pki(self) -> Pki:
        return self._pki

    def url(self, kme_id: str) -> str:
        """Base URL of a KME, e.g. ``https://127.0.0.1:40123``."""
        kme = self._get(kme_id)
        host = f"[{kme.host}]" if ":" in kme.host else kme.host
        return f"https://{host}:{kme.port}"

    def port(self, kme_id: str) -> int:
        return self._get(kme_id).port

    def faults(self, kme_id: str) -> Faults:
        return self._get(kme_id).ctx.faults

    def link_stock(self, kme_a: str, kme_b: str) -> int:
        """Keys of the default size now in the pool of the link ``kme_a``-``kme_b``."""
        return self.model.link_stock(kme_a, kme_b)

    def link_report(self) -> list[dict[str, object]]:
        """Every link's stock in keys and its key rate now (see ``KeyNetwork.link_report``)."""
        return self.model.link_report()

    def running(self, kme_id: str) -> bool:
        return self._get(kme_id).runner is not None
