"""Plain data shared by every part of the appliance.

Everything here is a frozen dataclass or an enum: values that cross module
boundaries (store -> policy -> protocol adapters -> events) and never carry
behaviour or I/O.  MAC addresses are always normalised with :func:`norm_mac`
(lower case, colon separated) before they are put into any of these.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

_HEX = re.compile(r"[0-9a-f]{12}")


def norm_mac(text: str) -> str:
    """Return ``aa:bb:cc:dd:ee:ff`` for any common MAC spelling.

    Accepts colons, dashes, dots (Cisco ``aabb.ccdd.eeff``) or bare hex, any
    case, and the ``01-`` hardware-type prefix pxelinux uses.  Raises
    ``ValueError`` for anything else.
    """
    raw = text.strip().lower()
    if raw.startswith("01-") and len(raw) == 20:
        raw = raw[3:]
    digits = re.sub(r"[:\-.]", "", raw)
    if not _HEX.fullmatch(digits):
        raise ValueError(f"not a MAC address: {text!r}")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


class UefiLoader(str, enum.Enum):
    """The first binary a UEFI x64 PXE client is sent to (per host, per profile).

    ``IPXE`` (the default): iPXE's snponly.efi, unsigned -- a machine with
    Secure Boot on refuses it.  ``GRUB``: Microsoft-signed shim, which loads
    Debian-signed GRUB (``grubx64.efi`` next to itself), which reads its
    per-MAC grub.cfg; the kernel must then be signed by a key shim trusts.
    """

    IPXE = "ipxe"
    GRUB = "grub"


class Firmware(enum.Enum):
    """The boot environment family a client architecture (option 93) maps to.

    Only the family matters to the boot policy: it picks the loader binary and
    the local-boot script.  ``UNKNOWN`` is a real value (an architecture type
    the registry does not know, or one we cannot serve), never an exception.
    """

    BIOS = "bios"
    EFI_IA32 = "efi-ia32"
    EFI_X64 = "efi-x64"
    EFI_ARM32 = "efi-arm32"
    EFI_ARM64 = "efi-arm64"
    EFI_RISCV32 = "efi-riscv32"
    EFI_RISCV64 = "efi-riscv64"
    EFI_RISCV128 = "efi-riscv128"
    EFI_LOONGARCH32 = "efi-loongarch32"
    EFI_LOONGARCH64 = "efi-loongarch64"
    UBOOT = "uboot"
    OTHER = "other"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Machine:
    """What one boot request tells us about the machine that sent it.

    Built by a protocol adapter from the packet or the request path; the
    policy decides on nothing else.  ``arch`` is the raw option-93 value
    (``None`` when absent); ``firmware`` is its family after the config's
    override map.  ``interface`` is where the request entered the appliance
    (the only trustworthy hint about which network it belongs to); ``relay``
    is the giaddr of a DHCP relay, if any; ``circuit_id`` / ``remote_id``
    are that relay's option-82 sub-options, set only when the relay is one
    the config trusts (opaque bytes: switches put port names or binary ids).
    """

    mac: str
    firmware: Firmware = Firmware.BIOS
    arch: int | None = None
    ipxe: bool = False
    vendor_class: str | None = None
    user_class: str | None = None
    interface: str | None = None
    relay: str | None = None
    http_client: bool = False
    circuit_id: bytes | None = None  # option 82.1 (RFC 3046), only from a trusted relay
    remote_id: bytes | None = None   # option 82.2 (RFC 3046), only from a trusted relay


@dataclass(frozen=True)
class Distro:
    name: str
    kernel: str
    initrd: str
    arch: str = "x86_64"
    breed: str = "generic"
    variables: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Profile:
    name: str
    distro: str
    template: str | None = None
    cmdline: str = ""
    variables: dict = field(default_factory=dict, hash=False, compare=False)
    uefi_loader: UefiLoader = UefiLoader.IPXE  # what its hosts' UEFI x64 firmware runs first


@dataclass(frozen=True)
class TemplateVersion:
    """One saved version of an installer template (version 0: the bundled file)."""

    name: str
    version: int
    body: str
    ts: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class BootRule:
    """One imported boot decision (from an ISC dhcpd.conf, see
    :mod:`appliance.dhcpd_conf.flatten`).

    ``when`` is a dhcp-eval(5) boolean expression as ISC text (``None``:
    always); :mod:`appliance.boot_rules` parses it once and evaluates it
    against the request.  Each of ``filename`` / ``next_server`` /
    ``server_name`` may be ``None`` (this rule does not set it).  A host's
    rules are ordered: for each field the first matching rule that sets it
    wins (dhcpd's "innermost scope, last statement" order, flattened).
    """

    when: str | None = None
    filename: str | None = None
    next_server: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class Host:
    """A machine the operator knows, keyed by MAC.

    ``netboot`` is the netboot-once flag: on means the next boot installs;
    a valid completion callback turns it off.  ``token`` is the secret of the
    current install (``None`` when netboot is off).  ``options`` are DHCP
    options for this host only (ISC name -> canonical value, see
    :mod:`appliance.dhcp_options`), laid over its subnet's.

    ``boot_rules`` is what an imported dhcpd.conf said this host boots; it
    is used only when the host has no ``profile`` (a profile means
    Plowshare's own boot, which takes precedence).  ``tenant`` owns the host
    (``None``: the operator).  ``source`` names the import that created it
    (``dhcpd:operator``, ``dhcpd:<tenant>``; ``None``: added by hand): a
    re-import from the same source removes the hosts it no longer lists and
    never touches hosts of another source.  ``uefi_loader`` ``None`` means
    "as the profile says" (see :class:`UefiLoader`).
    """

    mac: str
    profile: str | None
    name: str | None = None
    ip: str | None = None
    netboot: bool = True
    token: str | None = None
    variables: dict = field(default_factory=dict, hash=False, compare=False)
    options: dict = field(default_factory=dict, hash=False, compare=False)
    boot_rules: tuple[BootRule, ...] = ()
    tenant: str | None = None
    source: str | None = None
    uefi_loader: UefiLoader | None = None


@dataclass(frozen=True)
class Subnet:
    """One IPv4 subnet the DHCP server hands addresses out in.

    ``network`` is canonical CIDR text (``10.1.0.0/24``); ``pools`` are
    inclusive ``(first, last)`` ranges inside it (none: reservations only);
    ``options`` maps ISC option names to canonical values
    (:mod:`appliance.dhcp_options`).  ``lease_time`` / ``max_lease_time``
    ``None`` mean the ``[dhcp]`` defaults.  ``source`` is ``"config"`` or
    ``"store"`` (where it was defined; both at once is a config error).
    ``always_send``: ISC names of options sent even to a client whose
    parameter request list (option 55) does not ask for them (config only).
    """

    network: str
    pools: tuple[tuple[str, str], ...] = ()
    options: dict = field(default_factory=dict, hash=False)
    lease_time: int | None = None
    max_lease_time: int | None = None
    source: str = "config"
    always_send: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: str
    expires: float
    state: str = "bound"  # "offered" | "bound" | "released" | "declined" | "conflict"
    hostname: str | None = None


@dataclass(frozen=True)
class Event:
    ts: float
    mac: str
    kind: str
    detail: str = ""


@dataclass(frozen=True)
class BootSpec:
    """The boot policy's answer for one machine, valid for one boot.

    ``local`` means netboot is off: every loader answers with a script that
    exits to the local disk.  Otherwise ``kernel``/``initrd`` are paths
    relative to the HTTP root (``/distro/<name>/kernel``) and ``cmdline`` is
    already rendered (it carries the install token).  ``loader`` is the first
    binary the firmware must fetch when it is not yet running iPXE (``None``
    when it is); ``script_url`` is the iPXE script that machine gets.

    ``imported`` marks a host booted by its imported ``boot_rules`` (no
    profile): DHCP then sends ``filename`` (``None``: no rule matched, no
    boot answer), ``next_server`` as siaddr and ``server_name`` as sname
    instead of Plowshare's loader, and Plowshare's own scripts exit to the
    local disk (``local`` is True: there is nothing of ours to install).
    ``rule`` says which rules decided, for ``plowshare explain``.
    """

    mac: str
    firmware: Firmware
    local: bool
    loader: str | None
    script_url: str
    profile: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    token: str | None = None
    imported: bool = False
    filename: str | None = None
    next_server: str | None = None
    server_name: str | None = None
    rule: str | None = None
