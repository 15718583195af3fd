"""Keep the calling thread's signal stack across OpenVINO model compilation.

OpenVINO's CPU plugin (``compile_model``) installs its own alternate signal stack
(``sigaltstack``) on the calling thread and does not put the previous one back. When
that plugin memory is later freed, the thread is left pointing at unmapped memory, and
the next signal delivered on the alternate stack kills the process with SIGSEGV
(si_code SI_KERNEL) -- for example the SIGCHLD that reaches a process which has run a
torch DataLoader (its SIGCHLD handler, like every Python handler, is SA_ONSTACK) when
a child process exits. ``preserve_sigaltstack()`` saves the stack before the call and
restores it afterwards. On platforms without ``sigaltstack`` it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager


class _StackT(ctypes.Structure):  # struct stack_t (Linux)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.sigaltstack.argtypes = [ctypes.POINTER(_StackT), ctypes.POINTER(_StackT)]
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def current_sigaltstack() -> tuple[int, int, int] | None:
    """(ss_sp, ss_flags, ss_size) of the calling thread, or None where unsupported."""
    if _LIBC is None:
        return None
    st = _StackT()
    if _LIBC.sigaltstack(None, ctypes.byref(st)) != 0:
        return None
    return (st.ss_sp or 0, st.ss_flags, st.ss_size)


@contextmanager
def preserve_sigaltstack():
    """Restore the calling thread's alternate signal stack after the block."""
    if _LIBC is None:
        yield
        return
    saved = _StackT()
    ok = _LIBC.sigaltstack(None, ctypes.byref(saved)) == 0
    try:
        yield
    finally:
        if ok:
            now = _StackT()
            _LIBC.sigaltstack(None, ctypes.byref(now))
            if (now.ss_sp, now.ss_flags, now.ss_size) != (saved.ss_sp, saved.ss_flags, saved.ss_size):
                restore = _StackT(saved.ss_sp, saved.ss_flags & ~1, saved.ss_size)  # SS_ONSTACK is not settable
                _LIBC.sigaltstack(ctypes.byref(restore), None)
