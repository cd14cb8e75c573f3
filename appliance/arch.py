"""Client system architecture types (DHCP option 93) and what they mean to us.

Source: RFC 4578 section 2.1 and the IANA "Processor Architecture Types"
registry (which RFC 5970 shares with DHCPv6 option 61).  Every registered
value is listed; anything else maps to ``Firmware.UNKNOWN`` unless the
operator's ``arch_overrides`` config says otherwise (field quirk: some old
x64 UEFI firmware sends 9, "EBC", for itself -- we map 9 to x64 for that
reason, as iPXE and dnsmasq users do).
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Firmware


@dataclass(frozen=True)
class ArchType:
    code: int
    name: str
    firmware: Firmware
    http: bool = False  # the "boot from HTTP" variant (UEFI HTTP boot)


_B, _O = Firmware.BIOS, Firmware.OTHER
ARCH_TYPES: dict[int, ArchType] = {a.code: a for a in (
    ArchType(0, "x86 BIOS", _B),
    ArchType(1, "NEC/PC98", _O),
    ArchType(2, "Itanium", _O),
    ArchType(3, "DEC Alpha", _O),
    ArchType(4, "Arc x86", _O),
    ArchType(5, "Intel Lean Client", _O),
    ArchType(6, "x86 UEFI", Firmware.EFI_IA32),
    ArchType(7, "x64 UEFI", Firmware.EFI_X64),
    ArchType(8, "EFI Xscale", _O),
    ArchType(9, "EBC", Firmware.EFI_X64),
    ArchType(10, "ARM 32-bit UEFI", Firmware.EFI_ARM32),
    ArchType(11, "ARM 64-bit UEFI", Firmware.EFI_ARM64),
    ArchType(12, "PowerPC Open Firmware", _O),
    ArchType(13, "PowerPC ePAPR", _O),
    ArchType(14, "POWER OPAL v3", _O),
    ArchType(15, "x86 UEFI HTTP", Firmware.EFI_IA32, True),
    ArchType(16, "x64 UEFI HTTP", Firmware.EFI_X64, True),
    ArchType(17, "EBC HTTP", Firmware.EFI_X64, True),
    ArchType(18, "ARM 32-bit UEFI HTTP", Firmware.EFI_ARM32, True),
    ArchType(19, "ARM 64-bit UEFI HTTP", Firmware.EFI_ARM64, True),
    ArchType(20, "x86 BIOS HTTP", _B, True),
    ArchType(21, "ARM 32-bit U-Boot", Firmware.UBOOT),
    ArchType(22, "ARM 64-bit U-Boot", Firmware.UBOOT),
    ArchType(23, "ARM 32-bit U-Boot HTTP", Firmware.UBOOT, True),
    ArchType(24, "ARM 64-bit U-Boot HTTP", Firmware.UBOOT, True),
    ArchType(25, "RISC-V 32-bit UEFI", Firmware.EFI_RISCV32),
    ArchType(26, "RISC-V 32-bit UEFI HTTP", Firmware.EFI_RISCV32, True),
    ArchType(27, "RISC-V 64-bit UEFI", Firmware.EFI_RISCV64),
    ArchType(28, "RISC-V 64-bit UEFI HTTP", Firmware.EFI_RISCV64, True),
    ArchType(29, "RISC-V 128-bit UEFI", Firmware.EFI_RISCV128),
    ArchType(30, "RISC-V 128-bit UEFI HTTP", Firmware.EFI_RISCV128, True),
    ArchType(31, "s390 Basic", _O),
    ArchType(32, "s390 Extended", _O),
    ArchType(33, "MIPS 32-bit UEFI", _O),
    ArchType(34, "MIPS 64-bit UEFI", _O),
    ArchType(35, "Sunway 32-bit UEFI", _O),
    ArchType(36, "Sunway 64-bit UEFI", _O),
    ArchType(37, "LoongArch 32-bit UEFI", Firmware.EFI_LOONGARCH32),
    ArchType(38, "LoongArch 32-bit UEFI HTTP", Firmware.EFI_LOONGARCH32, True),
    ArchType(39, "LoongArch 64-bit UEFI", Firmware.EFI_LOONGARCH64),
    ArchType(40, "LoongArch 64-bit UEFI HTTP", Firmware.EFI_LOONGARCH64, True),
    ArchType(41, "ARM rpiboot", _O),
)}


def classify(code: int | None, overrides: dict[int, Firmware] | None = None
             ) -> tuple[Firmware, bool]:
    """Return ``(firmware, is_http_boot)`` for an option-93 value.

    ``None`` (option absent) is a legacy BIOS PXE client or a plain DHCP
    client; both are treated as BIOS.  Overrides win over the registry.
    """
    if code is None:
        return Firmware.BIOS, False
    if overrides and code in overrides:
        known = ARCH_TYPES.get(code)
        return overrides[code], bool(known and known.http)
    known = ARCH_TYPES.get(code)
    if known is None:
        return Firmware.UNKNOWN, False
    return known.firmware, known.http


def describe(code: int | None) -> str:
    if code is None:
        return "none"
    known = ARCH_TYPES.get(code)
    return f"{code} ({known.name})" if known else f"{code} (unregistered)"


# The iPXE build each firmware family chainloads into.  Paths are relative to
# the netboot root; netboot/install-bootloaders puts them there.
IPXE_LOADERS: dict[Firmware, str] = {
    Firmware.BIOS: "ipxe/undionly.kpxe",
    Firmware.EFI_X64: "ipxe/snponly.efi",
    Firmware.EFI_ARM64: "ipxe/arm64/snponly.efi",
}

# The Secure Boot chain (UefiLoader.GRUB): Microsoft-signed shim, which
# fetches ``grubx64.efi`` from its own TFTP directory (shim's netboot.c keeps
# the DHCP boot file's directory and appends its default loader name);
# netboot/install-bootloaders --with-grub puts both there.
SHIM_LOADERS: dict[Firmware, str] = {
    Firmware.EFI_X64: "grub/shimx64.efi",
}
