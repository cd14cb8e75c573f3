"""dhcpd.conf import: mapping of the corpus, boot rules served by the policy,
tenants, atomic apply, re-import, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.boot_rules import decide
from appliance.cli import main
from appliance.config import load_config
from appliance.dhcpd_conf import parse
from appliance.dhcpd_conf.importer import apply, load
from appliance.dhcpd_conf.plan import Snapshot, plan
from appliance.kickstart import Renderer
from appliance.model import Firmware, Host, Machine
from appliance.policy import BootPolicy
from appliance.sandbox_inline import InlineSandbox
from appliance.servers.dhcp_boot import boot_options
from appliance.store import Store, StoreError
from appliance.templates import TemplateLibrary

DATA = Path(__file__).resolve().parents[1] / "data" / "dhcpd"
GOOD = sorted(DATA.glob("*.conf"))
COBBLER = DATA / "cobbler-bios-uefi-ipxe.conf"
BIOS, UEFI, IPXE = "52:54:00:12:34:01", "52:54:00:12:34:02", "52:54:00:12:34:03"
REFUSED = {"events-and-execute.conf", "man-ddns-keys-zones.conf"}


def planned(path: Path, snapshot: Snapshot | None = None, tenant=None):
    return plan(load(path), snapshot or Snapshot(), tenant)


def pxe(mac, arch, ipxe=False):
    return Machine(mac=mac, arch=arch, firmware=Firmware.BIOS if arch == 0 else
                   Firmware.EFI_X64, vendor_class="PXEClient:Arch:0000" if not ipxe else None,
                   user_class="iPXE" if ipxe else None, ipxe=ipxe)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_every_corpus_file_imports_and_every_issue_names_a_line(path):
    result = planned(path)
    assert result.ok == (path.name not in REFUSED), [str(e) for e in result.errors]
    lines = len(path.read_text().splitlines())
    for issue in [*result.errors, *result.warnings, *result.rejections, *result.conflicts]:
        file, _, line = issue.where.rpartition(":")
        assert file == str(path) and 1 <= int(line) <= lines, str(issue)


def test_cobbler_file_maps_hosts_subnet_and_options():
    result = planned(COBBLER)
    hosts = {h.mac: h for h in result.added}
    assert [(h.name, h.ip) for h in hosts.values()] == [
        ("bios01.example.org", "192.168.1.21"), ("uefi01.example.org", "192.168.1.22"),
        ("ipxe01.example.org", "192.168.1.23")]
    assert hosts[BIOS].options["domain-name-servers"] == ["192.168.1.1", "192.168.1.3"]
    [subnet] = result.subnets_added
    assert (subnet.network, subnet.pools, subnet.lease_time, subnet.max_lease_time) == \
        ("192.168.1.0/24", (("192.168.1.100", "192.168.1.254"),), 21600, 43200)
    assert subnet.options["routers"] == ["192.168.1.5"]
    where = {i.where.rsplit(":", 1)[1]: i.message for i in result.warnings}
    assert "ddns-update-style" in where["11"] and "allow booting" in where["13"]
    assert "set" in where["17"] or "vendorclass" in where["17"]


@pytest.mark.parametrize("mac,arch,ipxe,filename", [
    (IPXE, 0, False, "undionly.kpxe"),              # host else-branch beats the class
    (IPXE, 0, True, "http://192.168.1.2/cblr/svc/op/gpxe/system/ipxe01"),
    (BIOS, 7, True, "http://192.168.1.2/cblr/svc/op/gpxe/system/bios01"),
    (UEFI, 7, False, "grub/grubx64.efi"),           # unconditional host filename
])
def test_cobbler_host_rules(mac, arch, ipxe, filename):
    host = {h.mac: h for h in planned(COBBLER).added}[mac]
    decision = decide(host.boot_rules, pxe(mac, arch, ipxe))
    assert (decision.filename, decision.next_server) == (filename, "192.168.1.2")


CLASS_ONLY = """
option system-arch code 93 = unsigned integer 16;
subnet 10.9.0.0 netmask 255.255.255.0 {
  next-server 10.9.0.2;
  class "pxeclients" {
    match if substring (option vendor-class-identifier, 0, 9) = "PXEClient";
    if option system-arch = 00:07 { filename "grub/grubx64.efi"; }
    elsif option system-arch = 00:09 { filename "grub/grub2-x86_64.efi"; }
    else { filename "pxelinux.0"; }
  }
}
host a { hardware ethernet 52:54:00:00:09:01; fixed-address 10.9.0.5;
  if exists user-class and option user-class = "iPXE" { filename "http://10.9.0.2/a.ipxe"; }
}
"""


@pytest.mark.parametrize("arch,ipxe,filename", [
    (0, False, "pxelinux.0"), (7, False, "grub/grubx64.efi"),
    (9, False, "grub/grub2-x86_64.efi"), (7, True, "http://10.9.0.2/a.ipxe"),
])
def test_cobbler_pxe_class_inherited_through_the_hosts_subnet(arch, ipxe, filename):
    [host] = plan(parse(CLASS_ONLY, "c.conf"), Snapshot()).added
    decision = decide(host.boot_rules, pxe(host.mac, arch, ipxe))
    assert (decision.filename, decision.next_server) == (filename, "10.9.0.2")


def test_no_match_without_pxe_vendor_class_and_unsupported_is_a_warning():
    text = CLASS_ONLY.replace('host a {', 'host b { hardware ethernet 52:54:00:00:09:02;\n'
                              '  if foo = 1 { filename "never"; } }\nhost a {')
    result = plan(parse(text, "c.conf"), Snapshot())
    a = next(h for h in result.added if h.mac.endswith("09:01"))
    assert decide(a.boot_rules, Machine(mac=a.mac, arch=0)).filename is None
    b = next(h for h in result.added if h.mac.endswith("09:02"))
    assert decide(b.boot_rules, pxe(b.mac, 0)).filename == "pxelinux.0"
    assert any("variable foo" in w.message and w.where == "c.conf:13"
               for w in result.warnings), result.warnings


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state.db").open()
    yield s
    s.close()


def test_dangerous_statements_refuse_the_whole_import(store):
    result = planned(DATA / "events-and-execute.conf", Snapshot.of(store))
    assert not result.ok and {e.where.rsplit(":", 1)[1] for e in result.errors} == \
        {"3", "5", "9", "12", "13", "18"}
    with pytest.raises(ValueError):
        apply(result, store, 60)
    assert store.hosts() == []


def test_include_only_under_the_allowed_directory(tmp_path):
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "hosts.conf").write_text("host a { hardware ethernet 52:54:00:00:00:0a; }\n")
    main_file = tmp_path / "dhcpd.conf"
    main_file.write_text('include "inc/hosts.conf";\n')
    assert not plan(load(main_file), Snapshot()).ok
    assert [h.mac for h in plan(load(main_file, inc), Snapshot()).added] == \
        ["52:54:00:00:00:0a"]
    main_file.write_text('include "/etc/passwd";\n')
    with pytest.raises(ValueError, match="outside the allowed directory"):
        load(main_file, inc)


def test_reimport_removes_only_its_own_vanished_hosts(store, tmp_path):
    store.add_host(Host("52:54:00:00:00:99", None, name="by-hand"), 60)
    apply(planned(COBBLER, Snapshot.of(store)), store, 60)
    shorter = tmp_path / "c.conf"
    text = COBBLER.read_text()
    shorter.write_text(text[:text.index("    host ipxe01-eth0")] + "}\n")
    result = planned(shorter, Snapshot.of(store))
    assert [h.mac for h in result.removed] == [IPXE] and sorted(result.unchanged) == [BIOS, UEFI]
    apply(result, store, 60)
    assert [h.mac for h in store.hosts()] == ["52:54:00:00:00:99", BIOS, UEFI]
    again = planned(shorter, Snapshot.of(store))
    assert not (again.added or again.changed or again.removed)


def test_operator_import_does_not_take_over_other_hosts(store):
    store.add_host(Host(BIOS, None, name="mine"), 60)
    store.add_host(Host("52:54:00:00:00:77", None, ip="192.168.1.22"), 60)
    result = planned(COBBLER, Snapshot.of(store))
    assert [h.mac for h in result.added] == [IPXE]
    assert {c.mac: c.message for c in result.conflicts} == {
        BIOS: "a host with this MAC exists (added by hand): left as it is",
        UEFI: "address 192.168.1.22 is reserved for 52:54:00:00:00:77 (the operator)"}


def test_failed_apply_changes_nothing(store):
    result = planned(COBBLER, Snapshot.of(store))
    # another writer takes one of the planned addresses after the plan was made
    store.add_host(Host("52:54:00:00:00:77", None, ip="192.168.1.23"), 60)
    with pytest.raises(StoreError, match="nothing changed"):
        apply(result, store, 60)
    assert [h.mac for h in store.hosts()] == ["52:54:00:00:00:77"] and store.subnets() == []


TENANT_FILE = """
authoritative;
option domain-name "evil.example";
subnet 192.168.1.0 netmask 255.255.255.0 { range 192.168.1.100 192.168.1.200; }
class "pxeclients" {
  match if substring (option vendor-class-identifier, 0, 9) = "PXEClient";
  filename "tenant.kpxe";
}
host mine { hardware ethernet 52:54:00:aa:00:01; fixed-address 192.168.1.50; }
host theirs { hardware ethernet 52:54:00:bb:00:01; fixed-address 192.168.1.51; }
host outside { hardware ethernet 52:54:00:aa:00:02; fixed-address 192.168.1.90; }
host taken { hardware ethernet 52:54:00:aa:00:03; fixed-address 192.168.1.60; }
"""


def test_tenant_upload_applies_only_its_own_entries(store):
    store.add_tenant("acme")
    store.add_tenant("globex")
    store.assign_tenant("acme", ["52:54:00:aa:00:01", "52:54:00:aa:00:02",
                                 "52:54:00:aa:00:03"], [("192.168.1.40", "192.168.1.69")])
    store.assign_tenant("globex", ["52:54:00:bb:00:01"])
    store.add_host(Host("52:54:00:bb:00:02", None, ip="192.168.1.60", tenant="globex"), 60)
    result = plan(parse(TENANT_FILE, "t.conf"), Snapshot.of(store), "acme")
    assert result.ok and [h.mac for h in result.added] == ["52:54:00:aa:00:01"]
    why = {(r.where, r.mac): r.message for r in result.rejections}
    assert why[("t.conf:10", "52:54:00:bb:00:01")] == \
        "MAC is not assigned to tenant acme (another tenant owns it)"
    assert "outside tenant acme's ranges" in why[("t.conf:11", "52:54:00:aa:00:02")]
    assert "reserved for 52:54:00:bb:00:02 (tenant globex)" in \
        why[("t.conf:12", "52:54:00:aa:00:03")]
    assert "global statement" in why[("t.conf:2", None)]
    assert "global statement" in why[("t.conf:3", None)]
    assert any("only the operator declares networks" in r.message
               for r in result.rejections if r.where == "t.conf:4")
    assert result.subnets_added == []
    [host] = result.added
    assert (host.tenant, host.source) == ("acme", "dhcpd:acme")
    assert decide(host.boot_rules, pxe(host.mac, 0)).filename == "tenant.kpxe"


@pytest.fixture
def policy(tmp_path, store):
    cfg = load_config(None, address="10.0.0.1", state_dir=str(tmp_path),
                      kickstarts_dir=str(tmp_path))
    return BootPolicy(store, cfg, Renderer(InlineSandbox(), TemplateLibrary(store, tmp_path)))


def test_policy_and_dhcp_serve_the_imported_rules(policy, store):
    apply(planned(COBBLER, Snapshot.of(store)), store, 60)
    machine = pxe(BIOS, 0)
    spec = policy.boot_spec(machine)
    assert spec.imported and spec.filename == "undionly.kpxe" and "rule 4" in spec.rule
    filename, opts = boot_options(machine, spec, policy.config)
    assert filename == "undionly.kpxe"
    assert ("tftp_server_name", b"192.168.1.2") in opts
    ipxe = pxe(BIOS, 0, ipxe=True)
    assert boot_options(ipxe, policy.boot_spec(ipxe), policy.config)[0] == \
        "http://192.168.1.2/cblr/svc/op/gpxe/system/bios01"
    store.set_netboot(BIOS, False, 60)  # netboot off: Plowshare's local answer
    spec = policy.boot_spec(machine)
    assert spec.local and not spec.imported and spec.loader == "ipxe/undionly.kpxe"


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_dry_run_json_apply_export_and_tenants(tmp_path, capsys):
    s = ["--state", str(tmp_path / "st")]
    code, out, _ = run(capsys, *s, "import-dhcpd", str(COBBLER), "--dry-run", "--json")
    report = json.loads(out)
    assert code == 0 and not report["applied"] and len(report["added"]) == 3
    assert run(capsys, *s, "export-dhcpd")[1].count("host h-") == 0  # dry run changed nothing
    code, out, _ = run(capsys, *s, "import-dhcpd", str(COBBLER))
    assert code == 0 and "3 added" in out and "applied" in out
    code, out, _ = run(capsys, *s, "export-dhcpd")
    assert out.count("host h-") == 3 and "option system-arch code 93" in out
    code, out, _ = run(capsys, *s, "import-dhcpd", str(DATA / "events-and-execute.conf"))
    assert code == 1 and "refused" in out
    bad = tmp_path / "bad.conf"
    bad.write_text("host x {\n")
    code, out, _ = run(capsys, *s, "import-dhcpd", str(bad))
    assert code == 1 and f"{bad}:2" in out
    assert run(capsys, *s, "tenant", "add", "acme")[0] == 0
    assert run(capsys, *s, "tenant", "assign", "acme", "52-54-00-AA-00-01",
               "--range", "192.168.1.40-192.168.1.69")[0] == 0
    rows = json.loads(run(capsys, *s, "tenant", "list", "--json")[1])
    assert rows == [{"name": "acme", "macs": ["52:54:00:aa:00:01"],
                     "ranges": [["192.168.1.40", "192.168.1.69"]]}]
    code, out, _ = run(capsys, *s, "import-dhcpd", str(COBBLER), "--tenant", "acme", "--json")
    report = json.loads(out)
    assert code == 0 and report["added"] == [] and len(report["rejections"]) >= 3
    assert run(capsys, *s, "export-dhcpd", "--tenant", "acme")[1].count("host h-") == 0
