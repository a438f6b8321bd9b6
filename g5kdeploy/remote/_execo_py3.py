"""Three Python-3 bugs of execo 2.8.2's TakTuk actions (TaktukRemote, TaktukPut, ChainPut),
fixed by patching exactly the broken attributes, once, and only on that version:
 1. execo.action writes str to os.write          -> encode in a shim of `os` seen by that module
 2. TaktukProcess lacks _trigger_start/end_handlers -> borrow Process's
 3. TaktukProcess hands str lines to byte handlers  -> encode before ProcessBase's handlers"""
import os
import types

import execo
import execo.action
from execo.process import Process, ProcessBase, TaktukProcess

_done = False


class _OsWithBytesWrite(types.ModuleType):
    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(fd, data):
        return os.write(fd, data.encode() if isinstance(data, str) else data)


def _bytes(buf):
    return buf.encode() if isinstance(buf, str) else buf


def apply() -> None:
    global _done
    if _done or not execo.__version__.startswith("2.8.2"):
        return
    execo.action.os = _OsWithBytesWrite("os")
    TaktukProcess._trigger_start_handlers = Process._trigger_start_handlers
    TaktukProcess._trigger_end_handlers = Process._trigger_end_handlers
    TaktukProcess._handle_stdout = lambda self, buf, eof, err: ProcessBase._handle_stdout(self, _bytes(buf), eof, err)
    TaktukProcess._handle_stderr = lambda self, buf, eof, err: ProcessBase._handle_stderr(self, _bytes(buf), eof, err)
    _done = True
