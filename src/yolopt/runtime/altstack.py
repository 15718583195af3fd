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


def _get() -> _StackT | None:
    st = _StackT()
    if _LIBC is None or _LIBC.sigaltstack(None, ctypes.byref(st)) != 0:
        return None
    return st


def current_sigaltstack() -> tuple[int, int, int] | None:
    """(ss_sp, ss_flags, ss_size) of the calling thread, or None where unsupported."""
    st = _get()
    return None if st is None else (st.ss_sp or 0, st.ss_flags, st.ss_size)


@contextmanager
def preserve_sigaltstack():
    """Restore the calling thread's alternate signal stack after the block."""
    saved = current_sigaltstack()
    try:
        yield
    finally:
        if saved is not None and current_sigaltstack() != saved:
            sp, flags, size = saved
            _LIBC.sigaltstack(ctypes.byref(_StackT(sp, flags & ~1, size)), None)  # SS_ONSTACK is not settable


def compile_openvino(model, device: str = "CPU", config: dict | None = None, core=None):
    """``ov.Core().compile_model`` with the calling thread's signal stack kept (the one way yolopt compiles)."""
    if core is None:
        import openvino as ov

        core = ov.Core()
    with preserve_sigaltstack():
        return core.compile_model(model, device, config or {})


@contextmanager
def openvino_compiles_keep_sigaltstack():
    """Within the block, every ``openvino.Core.compile_model`` (and so ``openvino.compile_model``) keeps the
    calling thread's signal stack: for libraries that compile models themselves, on any thread (nncf)."""
    import openvino as ov

    original = ov.Core.compile_model

    def compile_model(self, *args, **kwargs):
        with preserve_sigaltstack():
            return original(self, *args, **kwargs)

    ov.Core.compile_model = compile_model
    try:
        with preserve_sigaltstack():
            yield
    finally:
        ov.Core.compile_model = original
