"""End-to-end tests: network-namespace lab, QEMU guests, test initrd."""
