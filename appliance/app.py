"""The composition root: one config in, every component built and supervised.

Constructing :class:`Appliance` does no I/O.  :meth:`start` opens the store
and starts each protocol server in its own thread; :meth:`run` adds the
supervision loop used by ``plowshare serve``: a server whose thread died is
logged and restarted (at most ``MAX_RESTARTS`` times), after which the
process stops with a non-zero exit.  SIGTERM and SIGINT stop everything
cleanly.

SIGHUP reloads the configuration through the ``config_loader`` given at
construction (``plowshare serve`` re-reads its ``--config`` file with the
same flags): the DHCP subnets, pools, options, lease times, relays and the
boot policy's settings take effect for the next packet; sockets, leases and
the group committer are untouched.  A reload that fails to parse, whose
subnets clash with the store's, or that changes what only a restart can
apply (:data:`RESTART_FIELDS`) is logged with its reason and the running
configuration stays.
"""

from __future__ import annotations

import logging
import signal
import threading

from .bootfiles import BootFiles
from .bootscripts import BootScripts
from .config import Config, ConfigError
from .events import EventLog
from .kickstart import Renderer
from .leases import Allocator
from .policy import BootPolicy
from .sandbox import Limits, RenderSandbox
from .store import Store
from .templates import TemplateLibrary

log = logging.getLogger("plowshare.app")

MAX_RESTARTS = 5
SUPERVISE_SECONDS = 1.0
# what a SIGHUP cannot change without new sockets or a new state directory
RESTART_FIELDS = ("interface", "address", "state_dir", "netboot_dir", "http_port",
                  "http_bind", "tftp_port", "tftp_bind", "router_advertisements")
DHCP_RESTART_FIELDS = ("enabled", "mode", "server_port", "client_port", "pxe_port")


def restart_needed(old: Config, new: Config) -> list[str]:
    """Names of the settings that differ and only a restart applies."""
    changed = [f for f in RESTART_FIELDS if getattr(old, f) != getattr(new, f)]
    return changed + [f"dhcp.{f}" for f in DHCP_RESTART_FIELDS
                      if getattr(old.dhcp, f) != getattr(new.dhcp, f)]


class Appliance:
    def __init__(self, config: Config, config_loader=None):
        self.config = config
        self.config_loader = config_loader  # () -> Config, for SIGHUP
        self._reload = threading.Event()
        self.store = Store(config.db_path)
        self.events = EventLog(self.store)
        self.sandbox = RenderSandbox(Limits(seconds=config.render_seconds,
                                            memory_mb=config.render_memory_mb))
        self.library = TemplateLibrary(self.store, config.kickstarts_dir)
        self.renderer = Renderer(self.sandbox, self.library)
        self.policy = BootPolicy(self.store, config, self.renderer)
        self.scripts = BootScripts(config.templates_dir)
        self.allocator = Allocator(self.store, config.dhcp, config.address)
        self.servers: dict[str, object] = {}
        self._restarts: dict[str, int] = {}
        self._stopping = threading.Event()

    # -- building ---------------------------------------------------------
    def _build_servers(self) -> dict[str, object]:
        from .servers.dhcp import DhcpContext, DhcpServer
        from .servers.http import HttpServer
        from .servers.tftp import TftpServer
        from .web import Services, create_app

        cfg = self.config
        servers: dict[str, object] = {}
        services = Services(config=cfg, store=self.store, policy=self.policy,
                            events=self.events, scripts=self.scripts, renderer=self.renderer)
        servers["http"] = HttpServer(create_app(services), cfg.http_bind, cfg.http_port)
        servers["tftp"] = TftpServer(
            root=cfg.netboot_dir, generate=BootFiles(self.policy, self.scripts, cfg.base_url),
            on_event=self._tftp_event, bind=(cfg.tftp_bind, cfg.tftp_port),
            interface=None)
        if cfg.dhcp.enabled and cfg.dhcp.mode == "proxy":
            from .servers.proxydhcp import ProxyContext, ProxyDhcpServer
            servers["dhcp"] = ProxyDhcpServer(
                ProxyContext(cfg, self.policy, self.events, cfg.interface,
                             observe=self.store.observe_address))
        elif cfg.dhcp.enabled:
            ctx = DhcpContext(cfg, self.policy, self.allocator, self.events, cfg.interface)
            servers["dhcp"] = DhcpServer(ctx, guard=self._conflict_guard())
            if cfg.dhcp.rogue_detect and cfg.interface:
                from .servers.rogue import RogueDetector
                servers["dhcp-rogue"] = RogueDetector(
                    cfg.interface, cfg.address, self.events, cfg.dhcp.rogue_probe_interval)
        if cfg.router_advertisements and cfg.interface:
            from .servers.ra import RouterAdvertiser
            servers["ra"] = RouterAdvertiser(cfg.interface)
        return servers

    def _conflict_guard(self):
        if not self.config.dhcp.ping_check:
            return None
        from .servers.conflict import ConflictGuard
        from .servers.icmp_probe import IcmpProber
        return ConflictGuard(self.allocator, IcmpProber(self.config.interface))

    def rogue_servers(self) -> list[dict]:
        """Other DHCP servers seen on the provisioning network (newest first).

        Read from the ``dhcp-rogue`` events, so it works from the CLI too.
        """
        from .servers.rogue import rogue_summary
        return rogue_summary(self.store.events_of_kind("dhcp-rogue"))

    def _tftp_event(self, kind: str, client, path: str) -> None:
        mac = self.store.mac_for_ip(client[0])
        if mac is not None:
            self.events.record(mac, kind, path, logging.getLogger("plowshare.tftp"))

    # -- lifecycle ----------------------------------------------------------
    def open(self) -> None:
        """Open the state and start the render sandbox (no listeners)."""
        self.store.open()
        try:
            self.sandbox.start()
        except Exception:
            self.store.close()
            raise

    def close(self) -> None:
        self.sandbox.stop()
        self.store.close()

    def start(self) -> None:
        self.open()
        self.servers = self._build_servers()
        started = []
        try:
            for name, server in self.servers.items():
                server.start()
                started.append(server)
                log.info("%s started", name)
        except Exception:
            for server in reversed(started):
                server.stop()
            self.close()
            raise

    def stop(self) -> None:
        self._stopping.set()
        for name, server in reversed(list(self.servers.items())):
            try:
                server.stop()
            except Exception:
                log.exception("%s did not stop cleanly", name)
        self.store.close()
        log.info("stopped")

    def supervise_once(self) -> bool:
        """Restart dead servers; ``False`` when one is beyond recovery."""
        for name, server in self.servers.items():
            if server.is_alive():
                continue
            count = self._restarts.get(name, 0) + 1
            self._restarts[name] = count
            if count > MAX_RESTARTS:
                log.error("%s died %d times, giving up", name, count - 1)
                return False
            log.error("%s died, restarting (%d/%d)", name, count, MAX_RESTARTS)
            try:
                server.stop()
                server.start()
            except Exception:
                log.exception("%s restart failed", name)
        return True

    def reload(self, new: Config | None = None) -> bool:
        """Apply ``new`` (default: what ``config_loader`` reads now); see module doc.

        Returns whether it was applied; every refusal is one log line with
        its reason.
        """
        try:
            new = new if new is not None else self.config_loader()
        except (ConfigError, OSError) as exc:
            log.error("reload refused, configuration unchanged: %s", exc)
            return False
        blocked = restart_needed(self.config, new)
        if blocked:
            log.error("reload refused, configuration unchanged: %s need a restart",
                      ", ".join(blocked))
            return False
        dhcp = self.servers.get("dhcp")
        ctx = getattr(dhcp, "ctx", None)
        table = None
        if ctx is not None and hasattr(ctx, "table"):
            from .subnets import SubnetTable
            table = SubnetTable(new, self.store)
            try:
                table.refresh()
            except ConfigError as exc:
                log.error("reload refused, configuration unchanged: %s", exc)
                return False
        self.config = new
        self.policy.config = new
        self.allocator.dhcp = new.dhcp
        if ctx is not None:
            ctx.config = new
        if table is not None:
            ctx.subnets = table
        log.info("configuration reloaded (%d subnets)",
                 len(table.subnets()) if table is not None else 0)
        return True

    def run(self) -> int:
        """``plowshare serve``: start, supervise until a signal, stop."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopping.set())
        if self.config_loader is not None:
            signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self.start()
        code = 0
        while not self._stopping.wait(SUPERVISE_SECONDS):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if not self.supervise_once():
                code = 1
                break
        self.stop()
        return code
