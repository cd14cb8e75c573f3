"""``plowshare explain``: what a machine would get now, changing nothing.

It asks the same :class:`BootPolicy` the servers ask and maps the answer
with the same pure functions the servers use (:func:`dhcp.boot_options`,
:class:`BootScripts`, the kickstart :class:`Renderer`), so the dry run
cannot drift from the real thing.  No lease is offered, no event recorded,
no token consumed.
"""

from __future__ import annotations

from .arch import classify, describe
from .model import Machine
from .servers.dhcp_boot import boot_options


def _option_text(name, value) -> str:
    label = f"{name}" if isinstance(name, str) else f"option {name}"
    if isinstance(value, bytes):
        try:
            text = value.decode("ascii")
            if text.isprintable():
                return f"{label} = {text!r}"
        except UnicodeDecodeError:
            pass
        return f"{label} = 0x{value.hex()}"
    return f"{label} = {value!r}"


def explain(mac: str, arch: int | None, ipxe: bool, appliance) -> dict:
    """A JSON-able report for ``mac`` as seen by a client of ``arch``.

    ``appliance`` is an :class:`appliance.app.Appliance` whose store is open
    and whose renderer's sandbox is started; its servers need not run.
    """
    cfg, policy = appliance.config, appliance.policy
    firmware, http = classify(arch, cfg.dhcp.arch_overrides)
    machine = Machine(mac=mac, firmware=firmware, arch=arch, ipxe=ipxe, http_client=http,
                      vendor_class="HTTPClient" if http else "PXEClient",
                      user_class="iPXE" if ipxe else None)
    host = appliance.store.host(mac)
    report: dict = {
        "mac": mac, "client": {"arch": describe(arch), "firmware": firmware.value,
                               "ipxe": ipxe, "http_boot": http},
        "host": None if host is None else {"name": host.name, "profile": host.profile,
                                           "netboot": host.netboot, "ip": host.ip},
    }
    spec = policy.boot_spec(machine)
    if spec is None:
        report["decision"] = "no boot answer (unknown MAC, no loader for this firmware, " \
                             "or a broken profile: see the log)"
        return report
    report["decision"] = "local boot (netboot off)" if spec.local else \
        f"install profile {spec.profile}"
    if spec.imported:
        report["decision"] = f"imported boot rules: {spec.rule}"
    filename, options = boot_options(machine, spec, cfg)
    report["dhcp"] = {"next_server": spec.next_server or cfg.address, "filename": filename,
                      "options": [_option_text(n, v) for n, v in options]}
    report["ipxe_script"] = appliance.scripts.ipxe(spec, cfg.base_url)
    if not spec.local:
        report["kernel"] = f"{cfg.base_url}{spec.kernel}"
        report["initrd"] = f"{cfg.base_url}{spec.initrd}"
        report["cmdline"] = spec.cmdline
        report["kickstart"] = _kickstart(appliance, host)
    return report


def _kickstart(appliance, host) -> dict:
    from .kickstart import TemplateError

    profile = appliance.store.profile(host.profile) if host and host.profile else None
    if profile is None or not profile.template:
        return {"template": None, "text": None, "note": "profile has no template"}
    try:
        text = appliance.renderer.render(profile.template,
                                         appliance.policy.install_context(host))
    except TemplateError as exc:
        return {"template": profile.template, "text": None, "error": str(exc)}
    return {"template": profile.template, "text": text}


def format_report(report: dict) -> str:
    client = report["client"]
    ipxe = "  (iPXE)" if client["ipxe"] else ""
    lines = [(f"machine   {report['mac']}  arch {client['arch']}  "
             f"firmware {client['firmware']}{ipxe}")]
    host = report["host"]
    lines.append("host      " + ("unknown" if host is None else
                                 f"{host['name'] or '-'} profile {host['profile']} "
                                 f"netboot {'on' if host['netboot'] else 'off'}"))
    lines.append(f"decision  {report['decision']}")
    if "dhcp" in report:
        lines.append(f"dhcp      next-server {report['dhcp']['next_server']} "
                     f"filename {report['dhcp']['filename']!r}")
        lines += [f"          {opt}" for opt in report["dhcp"]["options"]]
        lines += ["", "--- iPXE script ---", report["ipxe_script"].rstrip()]
    if "kickstart" in report:
        ks = report["kickstart"]
        lines += ["", f"--- kickstart ({ks['template']}) ---",
                  (ks.get("text") or ks.get("error") or ks.get("note") or "").rstrip()]
    return "\n".join(lines) + "\n"
