"""QEMU guests: the guest image (Debian kernel + busybox, built here), the QEMU command
line with file-backed RAM, and a QMP client. Standard library only: it also runs on nodes."""
