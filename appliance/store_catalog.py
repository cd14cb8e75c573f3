"""Distros, profiles and templates in the store (what machines install).

A mixin of :class:`appliance.store.Store`; needs its ``_tx`` and ``_query``.
Templates keep every save as a new version (history only grows).
"""

from __future__ import annotations

import json
import time

from .model import Distro, Profile, TemplateVersion, UefiLoader
from .store_errors import StoreError


class CatalogRows:
    _DISTRO_COLS = "name, kernel, initrd, arch, breed, variables"
    _PROFILE_COLS = "name, distro, template, cmdline, variables, uefi_loader"

    @staticmethod
    def _distro(row) -> Distro:
        return Distro(*row[:5], variables=json.loads(row[5] or "{}"))

    def add_distro(self, d: Distro) -> None:
        with self._tx() as db:
            db.execute(f"INSERT INTO distros ({self._DISTRO_COLS}) VALUES (?,?,?,?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET kernel=excluded.kernel, "
                       "initrd=excluded.initrd, arch=excluded.arch, breed=excluded.breed, "
                       "variables=excluded.variables",
                       (d.name, d.kernel, d.initrd, d.arch, d.breed, json.dumps(d.variables)))

    def distro(self, name: str) -> Distro | None:
        rows = self._query(f"SELECT {self._DISTRO_COLS} FROM distros WHERE name=?", (name,))
        return self._distro(rows[0]) if rows else None

    def distros(self) -> list[Distro]:
        return [self._distro(r) for r in
                self._query(f"SELECT {self._DISTRO_COLS} FROM distros ORDER BY name")]

    def add_profile(self, p: Profile) -> None:
        if self.distro(p.distro) is None:
            raise StoreError(f"profile {p.name}: no distro named {p.distro!r}")
        with self._tx() as db:
            db.execute(f"INSERT INTO profiles ({self._PROFILE_COLS}) VALUES (?,?,?,?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET distro=excluded.distro, "
                       "template=excluded.template, cmdline=excluded.cmdline, "
                       "variables=excluded.variables, uefi_loader=excluded.uefi_loader",
                       (p.name, p.distro, p.template, p.cmdline, json.dumps(p.variables),
                        UefiLoader(p.uefi_loader).value))

    def profile(self, name: str) -> Profile | None:
        rows = self._query(f"SELECT {self._PROFILE_COLS} FROM profiles WHERE name=?", (name,))
        return self._profile(rows[0]) if rows else None

    @staticmethod
    def _profile(row) -> Profile:
        return Profile(*row[:4], variables=json.loads(row[4] or "{}"),
                       uefi_loader=UefiLoader(row[5] or UefiLoader.IPXE.value))

    def profiles(self) -> list[Profile]:
        return [self._profile(r) for r in
                self._query(f"SELECT {self._PROFILE_COLS} FROM profiles ORDER BY name")]

    # -- templates (every save is a version) -------------------------------------
    def save_template(self, name: str, body: str, note: str = "",
                      now: float | None = None) -> int:
        """Store ``body`` as the next version of ``name``; returns that version."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT MAX(version) FROM templates WHERE name=?",
                             (name,)).fetchone()
            version = (row[0] or 0) + 1
            db.execute("INSERT INTO templates VALUES (?,?,?,?,?)",
                       (name, version, body, now, note))
        return version

    def template(self, name: str, version: int | None = None) -> TemplateVersion | None:
        """The given version of ``name``, or its latest when ``version`` is None."""
        if version is None:
            rows = self._query("SELECT name, version, body, ts, note FROM templates "
                               "WHERE name=? ORDER BY version DESC LIMIT 1", (name,))
        else:
            rows = self._query("SELECT name, version, body, ts, note FROM templates "
                               "WHERE name=? AND version=?", (name, version))
        return TemplateVersion(*rows[0]) if rows else None

    def template_history(self, name: str) -> list[TemplateVersion]:
        """Every stored version, oldest first, without bodies."""
        return [TemplateVersion(n, v, "", ts, note) for n, v, ts, note in self._query(
            "SELECT name, version, ts, note FROM templates WHERE name=? ORDER BY version",
            (name,))]

    def template_names(self) -> list[str]:
        return [r[0] for r in self._query("SELECT DISTINCT name FROM templates ORDER BY name")]
