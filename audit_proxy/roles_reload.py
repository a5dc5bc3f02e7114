"""The roles in force for a running proxy, reread when their file changes.

An operator edits the roles file and the proxy follows within a second, with no restart and no
dropped connection. A file that does not parse or check is not applied: the proxy keeps the
roles it has and logs what is wrong, once per version of the file. A file that disappears is
not taken as "no roles" either (the built-in defaults are more permissive than most files).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from audit_proxy.file_stamp import file_stamp
from audit_proxy.keys import KeyInfo, Principal
from audit_proxy.roles import Role, Roles, RolesError, load_roles

log = logging.getLogger("bastion.proxy")

CHECK_EVERY_S = 1.0


class LiveRoles:
    """`Roles` that follow the file at `path` (checked at most every `every_s`, lazily)."""

    def __init__(
        self,
        path: Path,
        roles: Roles,
        keys: Callable[[], Iterable[KeyInfo]] | None = None,
        every_s: float = CHECK_EVERY_S,
    ) -> None:
        self.path = path
        self._roles = roles
        self._keys = keys
        self._every_s = every_s
        self._seen = file_stamp(path)
        self._next_check = time.monotonic() + every_s

    @property
    def current(self) -> Roles:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._every_s
            self._follow()
        return self._roles

    @property
    def source(self) -> str:
        return self.current.source

    def role_of(self, principal: Principal) -> str:
        return self.current.role_of(principal)

    def get(self, name: str) -> Role | None:
        return self.current.get(name)

    def _follow(self) -> None:
        stamp = file_stamp(self.path)
        if stamp == self._seen:
            return
        self._seen = stamp
        if stamp is None:
            log.warning("roles file %s is gone; keeping the roles in force", self.path)
            return
        try:
            roles = load_roles(self.path)
        except RolesError as exc:
            log.error("roles file %s changed but cannot be used; keeping the roles in force: %s",
                      self.path, exc)  # fmt: skip
            return
        if self._keys is not None:
            try:
                roles.check_keys(self._keys())
            except RolesError as exc:
                # Those keys are refused (403 naming the role) until the file defines it.
                log.warning("%s", exc)
        self._roles = roles
        log.info("roles reloaded from %s: %s", self.path, ", ".join(sorted(roles.roles)))
