"""Where nodes come from: the Testbed interface and its backends (local, g5k)."""
from __future__ import annotations

from abc import ABC, abstractmethod

from g5kdeploy.errors import UserError
from g5kdeploy.testbed.description import Description
from g5kdeploy.testbed.model import Node, NodeSet, Reservation

__all__ = ["Testbed", "Node", "NodeSet", "Reservation", "open"]


class Testbed(ABC):
    """The seam between the emulated and the real Grid'5000 (see DESIGN.md)."""
    description: Description

    @abstractmethod
    def reserve(self, request: dict[str, int], walltime: str | int = "1:00",
                name: str = "g5kdeploy", deploy: bool = True) -> Reservation:
        """Nodes per site from OAR; returns exactly the nodes OAR gave."""

    @abstractmethod
    def deploy(self, nodes, environment: str = "debian12-g5kdeploy") -> dict:
        """Reimage nodes (Kadeploy); per-node outcome."""

    @abstractmethod
    def release(self, reservation: Reservation) -> None:
        """End the reservation's OAR jobs."""

    @abstractmethod
    def shape(self, a: str, b: str, rate: str) -> None:
        """Limit traffic between sites a and b (a == b: the site's LAN links)."""

    @abstractmethod
    def nodes(self, hosts: str | None = None) -> NodeSet:
        """All nodes, or those of a hostlist."""

    @abstractmethod
    def destroy(self) -> None:
        """Remove everything the testbed created."""


def open(kind: str = "local", **kwargs) -> Testbed:  # noqa: A001 - mirrors DESIGN.md
    """The running testbed of that kind."""
    if kind == "local":
        from g5kdeploy.testbed.local import LocalTestbed
        return LocalTestbed.attach(**kwargs)
    raise UserError(f"unknown testbed kind {kind!r}: use 'local' (the g5k backend is not built yet)")
