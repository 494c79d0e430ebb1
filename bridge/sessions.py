"""Session-scoped stores.

A request with a ``session_id`` works in that session's store; one without
works in the global scope, which is a session that never expires. Sessions are
created on first use, isolated from each other, bounded in number, expire after
an idle TTL (never while one of their requests is in flight) and are freed at
once by ``end_session``. Each backend keeps its own state in a session's
``store``, a dict, under a key of its own (handlers reach it as ``ctx.store``);
the session knows nothing about what is in it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .errors import not_found, overloaded


class Session:
    def __init__(self, session_id: str | None) -> None:
        self.id = session_id
        self.created = time.time()
        self.last_used = time.monotonic()
        self.active = 0  # requests of this session in flight
        self.requests = 0
        self.store: dict = {}  # backend -> its state in this session

    def describe(self) -> dict:
        return {
            "session_id": self.id,
            "created_at": round(self.created, 3),
            "idle_s": round(time.monotonic() - self.last_used, 3),
            "in_flight": self.active,
            "requests": self.requests,
            "backends": sorted(self.store),
        }


class SessionTable:
    def __init__(self, ttl_s: float, max_sessions: int, on_close: Callable[[Session, str], None] | None = None):
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.global_session = Session(None)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._on_close = on_close or (lambda session, reason: None)

    def __len__(self) -> int:
        return len(self._sessions)

    def acquire(self, session_id: str | None) -> Session:
        """The session for a request (created on first use); counts the request in flight."""
        if session_id is None:  # the global scope never expires: nothing to count (list_sessions omits it)
            return self.global_session
        expired: list[Session] = []
        with self._lock:
            found = self._sessions.get(session_id)
            if found is not None:
                session = found
            else:
                if len(self._sessions) >= self.max_sessions:
                    expired = self._pop_expired()
                if len(self._sessions) >= self.max_sessions:
                    raise overloaded(
                        "too_many_sessions",
                        f"the worker already holds {self.max_sessions} sessions; end one with end_session "
                        "or raise --max-sessions",
                        max_sessions=self.max_sessions,
                    )
                session = self._sessions[session_id] = Session(session_id)
            session.active += 1
            session.requests += 1
            session.last_used = time.monotonic()
        self._close_all(expired, "expired")
        return session

    def release(self, session: Session) -> None:
        if session.id is None:
            return
        with self._lock:
            session.active -= 1
            session.last_used = time.monotonic()

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise not_found("unknown_session", f"no session {session_id!r} in this worker", session_id=session_id)
        return session

    def end(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            raise not_found("unknown_session", f"no session {session_id!r} in this worker", session_id=session_id)
        self._on_close(session, "ended")
        return session

    def expire(self) -> list[str]:
        """End every idle session older than the TTL; returns their ids."""
        with self._lock:
            expired = self._pop_expired()
        self._close_all(expired, "expired")
        return [s.id for s in expired if s.id is not None]

    def _pop_expired(self) -> list[Session]:
        cutoff = time.monotonic() - self.ttl_s
        gone = [(sid, s) for sid, s in self._sessions.items() if s.active == 0 and s.last_used < cutoff]
        for sid, _ in gone:
            del self._sessions[sid]
        return [s for _, s in gone]

    def _close_all(self, sessions: list[Session], reason: str) -> None:
        for session in sessions:
            self._on_close(session, reason)

    def describe(self) -> list[dict]:
        with self._lock:
            sessions = list(self._sessions.values())
        return [s.describe() for s in sessions]
