"""Provisioning-network endpoints: what booting machines and installers fetch.

Unauthenticated by nature (DESIGN.md, "Boundaries"): a machine gets only what
the boot policy allows its MAC, a kickstart only with its install's valid
token, and files only from inside the netboot tree or a distro's own kernel
and initrd.  Every decision is one line on ``plowshare.http``, MAC first
(``-`` when the client is unknown), and -- for a known MAC -- one event.
Secrets (tokens) are never logged.

    GET      /boot/<mac>.ipxe            iPXE script (install or local boot)
    GET      /ks/<token>                 the install's rendered kickstart
    GET|POST /done/<token>               completion callback: netboot off (single use)
    GET      /distro/<name>/kernel       kernel / initrd, with Range support
    GET      /distro/<name>/initrd
    GET      /netboot/<path>             the netboot tree, contained
    GET      /pxelinux.cfg/01-<mac>      per-MAC configs, as TFTP serves them
    GET      /grub/grub.cfg-<mac>
    GET      /grub/grub.cfg              GRUB's top level: sources the per-MAC file
    GET      /healthz
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Blueprint, Response, abort, request, send_file
from werkzeug.security import safe_join

from ..bootscripts import BootScriptError
from ..kickstart import TemplateError
from ..model import BootSpec, Firmware, Machine, norm_mac
from ..validate import kind_of, validate
from .services import services

log = logging.getLogger("plowshare.http")

bp = Blueprint("boot", __name__)

# iPXE ${platform} / ${buildarch} -> firmware family (efi builds only; pcbios is BIOS)
_EFI_BUILDARCH = {
    "x86_64": Firmware.EFI_X64,
    "i386": Firmware.EFI_IA32,
    "arm64": Firmware.EFI_ARM64,
    "arm32": Firmware.EFI_ARM32,
    "riscv64": Firmware.EFI_RISCV64,
    "riscv32": Firmware.EFI_RISCV32,
    "loong64": Firmware.EFI_LOONGARCH64,
}


# -- helpers ------------------------------------------------------------------
def firmware_from_args(args) -> Firmware:
    """Firmware family from ``?platform=${platform}&buildarch=${buildarch}``.

    Absent -> BIOS (the scripts branch on ``${platform}`` at run time anyway);
    present but unrecognised -> UNKNOWN.  ``arch`` is accepted for ``buildarch``.
    """
    platform = (args.get("platform") or "").strip().lower()
    buildarch = (args.get("buildarch") or args.get("arch") or "").strip().lower()
    if not platform or platform == "pcbios":
        return Firmware.BIOS
    if platform == "efi":
        return _EFI_BUILDARCH.get(buildarch, Firmware.UNKNOWN)
    return Firmware.UNKNOWN


def _client() -> str:
    return request.remote_addr or "-"


def _record(mac: str, kind: str, detail: str) -> None:
    """One event for a known MAC; a HEAD request is only logged."""
    if request.method == "HEAD":
        log.info("%s %s %s (HEAD from %s)", mac, kind, detail, _client())
        return
    services().events.record(mac, kind, detail, logger=log)


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/plain",
                    headers={"Cache-Control": "no-store"})


def _first_chunk() -> bool:
    """True unless this is a continuation Range request (log a download once)."""
    rng = request.range
    return rng is None or not rng.ranges or rng.ranges[0][0] == 0


def _spec(mac_text: str, what: str, firmware: Firmware, ipxe: bool) -> BootSpec:
    """Normalise the MAC (400 on junk) and ask the policy (404 on ``None``)."""
    try:
        mac = norm_mac(mac_text)
    except ValueError:
        log.info("- %s: not a MAC %r (from %s)", what, mac_text[:40], _client())
        abort(400)
    spec = services().policy.boot_spec(Machine(mac=mac, firmware=firmware, ipxe=ipxe))
    if spec is None:
        log.info("%s %s: nothing to boot (from %s)", mac, what, _client())
        abort(404)
    return spec


def _script(spec: BootSpec, render, kind: str) -> Response:
    svc = services()
    try:
        body = render(spec, svc.config.base_url)
    except BootScriptError as exc:
        log.error("%s %s: cannot render: %s", spec.mac, kind, exc)
        abort(500)
    _record(spec.mac, kind, "local" if spec.local else f"install {spec.profile}")
    return _text(body)


def _send(path: Path) -> Response:
    return send_file(path, mimetype="application/octet-stream", conditional=True, etag=True)


# -- boot scripts and loader configs -----------------------------------------
@bp.get("/boot/<mac>.ipxe")
def ipxe_script(mac: str):
    spec = _spec(mac, "http-script", firmware_from_args(request.args), ipxe=True)
    return _script(spec, services().scripts.ipxe, "http-script")


@bp.get("/pxelinux.cfg/<name>")
def pxelinux_config(name: str):
    if not name.lower().startswith("01-"):
        abort(404)  # hex-IP and "default" probes: per-MAC files only
    spec = _spec(name, "http-pxelinux", Firmware.BIOS, ipxe=False)
    return _script(spec, services().scripts.pxelinux, "http-pxelinux")


@bp.get("/grub/grub.cfg-<mac>")
def grub_config(mac: str):
    spec = _spec(mac, "http-grub", Firmware.EFI_X64, ipxe=False)
    return _script(spec, services().scripts.grub, "http-grub")


@bp.get("/grub/grub.cfg")
def grub_default_config():
    log.debug("%s http-grub: top-level grub.cfg (from %s)",
              services().store.mac_for_ip(request.remote_addr) or "-", _client())
    return _text(services().scripts.grub_default())


# -- kickstart and completion ----------------------------------------------------
@bp.get("/ks/<token>")
def kickstart(token: str):
    svc = services()
    host = svc.store.host_by_token(token)
    if host is None:
        log.warning("%s kickstart: unknown or expired token (from %s)",
                    svc.store.mac_for_ip(request.remote_addr) or "-", _client())
        abort(404)
    profile = svc.store.profile(host.profile) if host.profile else None
    if profile is None or not profile.template:
        log.warning("%s kickstart: profile %r has no template", host.mac, host.profile)
        abort(404)
    try:
        body = svc.renderer.render(profile.template, svc.policy.install_context(host))
    except TemplateError as exc:
        log.error("%s kickstart: template %s does not render: %s",
                  host.mac, profile.template, exc)
        _record(host.mac, "kickstart-error", f"{profile.template}: {exc}")
        return _text("500 kickstart template error\n", 500)
    errors = [p for p in validate(kind_of(profile.template), body) if p.severity == "error"]
    if errors:  # an installer fed a broken file stops at a prompt on a remote console
        first = errors[0]
        log.error("%s kickstart: %s rendered invalid: line %s: %s (%d problem(s))",
                  host.mac, profile.template, first.line, first.message, len(errors))
        _record(host.mac, "kickstart-invalid",
                f"{profile.template}: line {first.line}: {first.message}")
        return _text("500 kickstart does not validate\n", 500)
    _record(host.mac, "kickstart", profile.template)
    return _text(body)


@bp.route("/done/<token>", methods=["GET", "POST"])
def install_done(token: str):
    svc = services()
    if request.method == "HEAD":  # a probe must not spend the single-use token
        valid = svc.store.host_by_token(token) is not None
        return _text("ok\n", 200) if valid else _text("404 Not Found\n", 404)
    host = svc.store.complete_install(token)
    if host is None:
        log.warning("%s done: unknown, expired or already used token (from %s)",
                    svc.store.mac_for_ip(request.remote_addr) or "-", _client())
        abort(404)
    _record(host.mac, "install-done", host.profile or "")
    return _text("ok\n")


# -- files ------------------------------------------------------------------------
@bp.get("/distro/<name>/<any(kernel, initrd):part>")
def distro_file(name: str, part: str):
    svc = services()
    distro = svc.store.distro(name)
    if distro is None:
        log.info("- http-%s: no distro %r (from %s)", part, name[:64], _client())
        abort(404)
    path = Path(distro.kernel if part == "kernel" else distro.initrd)
    if not path.is_absolute() or not path.is_file():
        log.error("- http-%s: distro %s: %s is not an absolute path to a file",
                  part, name, path)
        abort(404)
    mac = svc.store.mac_for_ip(request.remote_addr)
    if _first_chunk():
        if mac is not None:
            _record(mac, f"http-{part}", name)
        else:
            log.info("- http-%s %s to unknown client %s", part, name, _client())
    return _send(path)


def netboot_file(root: Path, rel: str) -> Path | None:
    """``rel`` inside ``root`` as a regular file, after symlinks; else ``None``."""
    joined = safe_join(str(root), rel)
    if joined is None:
        return None
    real_root = os.path.realpath(root)
    real = os.path.realpath(joined)
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        return None
    return Path(real) if os.path.isfile(real) else None


@bp.get("/netboot/<path:path>")
def netboot(path: str):
    svc = services()
    target = netboot_file(svc.config.netboot_dir, path)
    mac = svc.store.mac_for_ip(request.remote_addr)
    if target is None:
        log.info("%s http-file: refused %r (from %s)", mac or "-", path[:200], _client())
        abort(404)
    if _first_chunk():
        if mac is not None:
            _record(mac, "http-file", path)
        else:
            log.info("- http-file %s to unknown client %s", path, _client())
    return _send(target)


@bp.get("/healthz")
def healthz():
    return _text("ok\n")
