"""Build the optional C accelerator of the TFTP loop (the rest is in pyproject.toml).

``appliance/servers/_tftp_pump.c`` is ``optional``: where it cannot be
compiled (no compiler or Python headers) the install still succeeds and the
TFTP server runs its pure-Python loop, logging that once at start.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "appliance.servers._tftp_pump",
            ["appliance/servers/_tftp_pump.c"],
            depends=["appliance/servers/_tftp_pump_window.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                                "-Wno-unused-parameter"],
            optional=True,
        )
    ],
)
