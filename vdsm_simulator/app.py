"""A whole simulator in one object: the cluster, its listener and its control API.

`vdsm-sim`, the test fixtures, the benchmarks and `taskmgrd demo` all start the simulator
through this class, so they run the very same wiring.
"""

from __future__ import annotations

import ssl
from types import TracebackType

from vdsm_simulator.cluster import Cluster
from vdsm_simulator.config import ServerConfig, Settings
from vdsm_simulator.control import build_control_app
from vdsm_simulator.server import SimServer


def server_ssl_context(cfg: ServerConfig) -> ssl.SSLContext | None:
    """TLS as VDSM serves it: the host's certificate, client certificates when a CA is given."""
    if cfg.tls_cert is None and cfg.tls_key is None:
        return None
    if cfg.tls_cert is None or cfg.tls_key is None:
        raise ValueError("TLS needs both tls_cert and tls_key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    if cfg.tls_ca is not None:
        ctx.load_verify_locations(cfg.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Simulator:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.cluster = Cluster(self.settings.cluster)
        self.server: SimServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None, "simulator not started"
        return self.server.port

    @property
    def host_ports(self) -> dict[str, int]:
        assert self.server is not None, "simulator not started"
        return dict(self.server.host_ports)

    async def start(self) -> Simulator:
        await self.cluster.start()
        cfg = self.settings.server
        server = SimServer(
            self.cluster,
            self.cluster.clock,
            host=cfg.address,
            port=cfg.port,
            ssl=server_ssl_context(cfg),
            port_per_host=list(self.cluster.hosts) if cfg.port_per_host else (),
        )
        server.mount_control(build_control_app(self.cluster, on_host_down=server.disconnect_host))
        self.server = server
        try:
            await server.start()
        except BaseException:
            await self.cluster.close()
            raise
        for name, port in server.host_ports.items():
            # "address:port" names the host, so a migration's `dst` finds it as on real VDSM
            self.cluster.aliases[f"{cfg.address}:{port}"] = name
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        await self.cluster.close()

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
